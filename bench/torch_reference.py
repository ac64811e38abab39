"""The cells of `robustlens bench` in PyTorch (torchvision resnet18 / efficientnet_b0, timm
convnext and vit; 3 classes), measured the same way: median images/s of timed iterations after
warm-up, one JSON object per line ({"arch", "what", "size", "batch", "img_per_s",
"peak_rss_mb", and on the CPU "isa"}).

    python bench/torch_reference.py --json > torch.jsonl
    robustlens bench --json > ours.jsonl
    python bench/torch_reference.py --compare ours.jsonl torch.jsonl   # the ratio table

    python bench/torch_reference.py --arch convnext_atto --json    # other architectures
    python bench/torch_reference.py --device cuda --sizes 224 --json   # on a GPU

Needs torch and torchvision (pip install torch torchvision; timm for convnext and vit).
Threads = CPU cores unless --threads is given. On CUDA: cuDNN with
`torch.backends.cudnn.benchmark = True`, TF32 off (as robustlens) unless --tf32, every
timed iteration ends with `torch.cuda.synchronize()`; the JSON adds "device" and
"peak_gpu_mb".
"""
import argparse
import json
import os
import statistics
import sys
import time


def resnet18(num_classes):
    """torchvision's ResNet-18 (the same layers, shapes and initialisation), for machines
    whose PyTorch comes without torchvision (a GPU machine without network)."""
    import torch
    from torch import nn

    def conv_bn(cin, cout, k, stride):
        return [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(*conv_bn(cin, cout, 3, stride), nn.ReLU(inplace=True),
                                      *conv_bn(cout, cout, 3, 1))
            self.down = (nn.Sequential(*conv_bn(cin, cout, 1, stride))
                         if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x):
            return torch.relu(self.body(x) + self.down(x))

    layers = [*conv_bn(3, 64, 7, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    model = nn.Sequential(*layers)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


def cells(args):
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = args.tf32
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
    if args.arch in ("resnet18", "efficientnet_b0"):
        try:
            import torchvision

            model = getattr(torchvision.models, args.arch)(num_classes=3)
        except ImportError:
            if args.arch != "resnet18":
                raise
            print("torchvision not installed: the built-in ResNet-18", file=sys.stderr)
            model = resnet18(3)
    else:
        import timm

        # dynamic_img_size: the ViTs run at 64 px with a resampled position embedding, as
        # robustlens does.
        extra = {"dynamic_img_size": True} if args.arch.startswith("vit_") else {}
        model = timm.create_model(args.arch, pretrained=False, num_classes=3, **extra)
    m, s = ([0.5] * 3, [0.5] * 3) if args.arch.startswith("vit_") else (
        [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    model = model.to(dev)
    mean = torch.tensor(m, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(s, device=dev).view(1, 3, 1, 1)

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    def fwd(x):
        return model((x - mean) / std)

    def timed(images, fn):
        for _ in range(args.warmup):
            fn()
        sync()
        secs = []
        for _ in range(max(1, args.iters)):
            t = time.perf_counter()
            fn()
            sync()
            secs.append(time.perf_counter() - t)
        return images / statistics.median(secs)

    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=5e-4)
    for size in args.sizes:
        b = args.batch_size
        x = torch.rand(b, 3, size, size, device=dev)
        y = torch.arange(b, device=dev) % 3

        def train_step(xb):
            model.train()
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(fwd(xb), y)
            loss.backward()
            opt.step()

        def input_grad(xb):
            model.eval()
            xv = xb.clone().requires_grad_(True)
            out = fwd(xv).gather(1, y.view(-1, 1)).sum()
            (g,) = torch.autograd.grad(out, xv)
            return g

        def eval_fwd():
            model.eval()
            with torch.no_grad():
                fwd(x)

        def pgd7():
            model.eval()
            for p in model.parameters():
                p.requires_grad_(False)
            eps = 0.5 * size / 32
            step = eps / 5
            delta = torch.rand_like(x) - 0.5
            delta = delta.renorm(p=2, dim=0, maxnorm=eps)
            xa = (x + delta).clamp(0, 1)
            for _ in range(7):
                xv = xa.clone().requires_grad_(True)
                loss = torch.nn.functional.cross_entropy(fwd(xv), y)
                (g,) = torch.autograd.grad(loss, xv)
                gn = g.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-10
                xa = xa + step * g / gn
                d = (xa - x).renorm(p=2, dim=0, maxnorm=eps)
                xa = (x + d).clamp(0, 1).detach()
            for p in model.parameters():
                p.requires_grad_(True)
            train_step(xa)

        def ig():
            model.eval()
            for p in model.parameters():
                p.requires_grad_(False)
            x1 = x[:1]
            alphas = (torch.arange(50, dtype=torch.float32, device=dev) + 0.5) / 50
            total = torch.zeros_like(x1)
            for i in range(0, 50, b):
                a = alphas[i:i + b].view(-1, 1, 1, 1)
                xs = (a * x1).requires_grad_(True)
                out = fwd(xs)[:, 0].sum()
                (g,) = torch.autograd.grad(out, xs)
                total += g.sum(0, keepdim=True)
            for p in model.parameters():
                p.requires_grad_(True)
            return total * x1 / 50

        work = {
            "eval": (b, eval_fwd),
            "train": (b, lambda: train_step(x)),
            "input-grad": (b, lambda: input_grad(x)),
            "pgd7": (b, pgd7),
            "ig": (1, ig),
        }
        for what in args.what:
            n, fn = work[what]
            ips = timed(n, fn)
            import resource

            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            cell = {"arch": args.arch, "what": what, "size": size, "batch": n, "img_per_s": ips,
                    "peak_rss_mb": round(rss, 1)}
            if cuda:
                cell["device"] = str(dev)
                cell["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
            else:
                cell["isa"] = isa()
            yield cell


def compare(ours_path, torch_path):
    def load(p):
        out = {}
        with open(p) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    d = json.loads(line)
                    out[(d.get("arch", "resnet18"), d["what"], d["size"])] = d["img_per_s"]
        return out

    ours, ref = load(ours_path), load(torch_path)
    print("| cell | robustlens | PyTorch | ratio |")
    print("|---|---|---|---|")
    for key in ours:
        if key in ref:
            print(f"| {key[0]} {key[1]} @{key[2]} | {ours[key]:.2f} | {ref[key]:.2f} | {ours[key] / ref[key]:.2f} |")


def isa():
    """The instruction sets PyTorch's CPU kernels run: ATen's (ATEN_CPU_CAPABILITY lowers it)
    and oneDNN's ceiling (ONEDNN_MAX_CPU_ISA, if set), e.g. "ATen AVX512, oneDNN default"."""
    import torch

    dnnl = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "default"
    return f"ATen {torch.backends.cpu.get_cpu_capability()}, oneDNN {dnnl}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--what", default="eval,train,input-grad,pgd7,ig")
    p.add_argument("--sizes", default="64,224")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--json", action="store_true")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--tf32", action="store_true", help="CUDA: allow TF32 (off by default)")
    p.add_argument("--compare", nargs=2, metavar=("OURS", "TORCH"))
    args = p.parse_args()
    if args.compare:
        compare(*args.compare)
        return
    args.what = [w.strip() for w in args.what.split(",") if w.strip()]
    args.sizes = [int(s) for s in args.sizes.split(",")]
    if not args.json:
        print(f"{'what':<12} {'size':>5} {'batch':>6} {'images/s':>10}")
    for c in cells(args):
        if args.json:
            print(json.dumps(c))
        else:
            print(f"{c['what']:<12} {c['size']:>5} {c['batch']:>6} {c['img_per_s']:>10.2f}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
