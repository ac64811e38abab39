"""Per-layer timings of ResNet-18's convolutions in PyTorch, to set beside robustlens's
`layer_timings` (src/ops/conv.rs): forward, input gradient and weight gradient of each
distinct convolution, batch 16, best of RUNS, and the network's totals (each layer times the
number of times it occurs).

    python bench/torch_layers.py [--size 64] [--threads 2] [--runs 20]

The gradients are `aten.convolution_backward` with one output mask each, as autograd calls
it. PyTorch picks its own algorithm per shape (oneDNN on x86).
"""

import argparse
import time

import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=64, help="image size (default 64)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--runs", type=int, default=20, help="timed runs per pass (default 20)")
    ap.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    n, q = a.batch, a.size // 4
    # (name, in channels, out channels, input size, stride, kernel, times per network)
    layers = [
        ("stem 7x7/2", 3, 64, a.size, 2, 7, 1),
        ("layer1 3x3", 64, 64, q, 1, 3, 4),
        ("layer2 3x3/2", 64, 128, q, 2, 3, 1),
        ("layer2 3x3", 128, 128, q // 2, 1, 3, 3),
        ("layer3 3x3/2", 128, 256, q // 2, 2, 3, 1),
        ("layer3 3x3", 256, 256, q // 4, 1, 3, 3),
        ("layer4 3x3/2", 256, 512, q // 4, 2, 3, 1),
        ("layer4 3x3", 512, 512, q // 8, 1, 3, 3),
    ]
    print(f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, "
          f"{a.threads} threads, batch {n}, {a.size} px")
    total = [0.0, 0.0, 0.0]
    for name, c, o, h, s, k, times in layers:
        x = torch.randn(n, c, h, h)
        w = torch.randn(o, c, k, k)
        p = k // 2
        g = torch.randn_like(torch.nn.functional.conv2d(x, w, stride=s, padding=p))

        def backward(mask):
            torch.ops.aten.convolution_backward(
                g, x, w, None, [s, s], [p, p], [1, 1], False, [0, 0], 1, mask)

        def forward():
            with torch.no_grad():
                torch.nn.functional.conv2d(x, w, stride=s, padding=p)

        passes = [forward, lambda: backward([True, False, False]),
                  lambda: backward([False, True, False])]
        best = [float("inf")] * 3
        for _ in range(a.runs):
            for i, f in enumerate(passes):
                t = time.perf_counter()
                f()
                best[i] = min(best[i], time.perf_counter() - t)
        print(f"{name:14} {h:3} px x{times} | forward {best[0] * 1e3:6.2f} ms | "
              f"input grad {best[1] * 1e3:6.2f} ms | weight grad {best[2] * 1e3:6.2f} ms")
        for i in range(3):
            total[i] += times * best[i]
    print("network (ms): forward %.1f, input gradients %.1f, weight gradients %.1f"
          % tuple(t * 1e3 for t in total))


if __name__ == "__main__":
    main()
