//! Weights derived from constant parameters, computed once per attack or attribution.
//!
//! The convolution kernels rearrange their weights before they run: the input gradient
//! flips and transposes the kernel (and multiplies in the folded BatchNorm scale),
//! Winograd's kernel transforms it (`G g Gᵀ`), the direct kernel packs it in blocks of
//! output channels. A PGD attack runs the same network 7 to 20 times, Integrated Gradients
//! 50 times, with the same weights; each pass used to redo all of it (in `perf`, 6-8% of an
//! input-gradient pass at 64 px, most of it the flipped copy of the wide layers).
//!
//! Inside [`with_frozen_weights`] the first pass keeps what it derived and later passes on
//! the same thread reuse it (kernels that can also read a weight in place, with the same
//! results, take a kept copy only from their second pass on: [`derive_if_kept`]). Only
//! weights whose storage the scope holds on to qualify (the eval-mode blocks pin theirs,
//! [`pin`]), and what was derived from them: a buffer address then names the same values
//! for the whole scope, because nothing can free the storage and hand its address to
//! another tensor. The caller's promise is that the parameters are not
//! changed while the scope runs; outside a scope, and on other threads, everything is
//! computed afresh as before. The results are the same bits either way.

use candle_core::{Tensor, TensorId};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What was derived from a weight buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Derivation {
    /// The flipped, transposed and scaled kernel of an input gradient.
    Flipped,
    /// Winograd's transformed weights.
    Winograd,
    /// The direct kernel's packed weights.
    DirectPack,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    what: Derivation,
    addr: usize,
    len: usize,
    /// Whatever else the result depends on (shape, scale bits).
    params: Vec<u32>,
}

impl Key {
    fn new(what: Derivation, src: &[f32], params: Vec<u32>) -> Key {
        let (addr, len) = span(src);
        Key {
            what,
            addr,
            len,
            params,
        }
    }
}

#[derive(Default)]
struct Scope {
    /// Tensors whose storage stays alive until the scope ends.
    pinned: Vec<Tensor>,
    /// `(address, length)` of the pinned tensors' values and of the derived buffers.
    known: HashSet<(usize, usize)>,
    derived: HashMap<Key, Arc<Vec<f32>>>,
    /// What [`derive_if_kept`] was asked for once and answered with `None`.
    asked: HashSet<Key>,
    hits: usize,
    /// Tensor pairs computed from parameters, by the id of the tensor that names them.
    pairs: HashMap<TensorId, (Tensor, Tensor)>,
}

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the reuse of derived weights inside [`with_frozen_weights`] on or off for the whole
/// process (on by default). Off, every pass derives its weights afresh, as outside a scope;
/// the results are the same bits either way.
pub fn set_weight_reuse(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

thread_local! {
    static SCOPE: RefCell<Option<Scope>> = const { RefCell::new(None) };
}

/// Runs `f` with the weights' derived forms kept for reuse on this thread (see the module
/// documentation); nested calls share the outermost scope. The model's parameters must not
/// change while `f` runs (PGD, saliency and evaluation passes do not change them). Costs
/// memory until `f` returns, about the convolution weights once more (Integrated Gradients
/// with ResNet-18 at 224 px: peak 571 against 485 MB).
pub fn with_frozen_weights<R>(f: impl FnOnce() -> R) -> R {
    if !ENABLED.load(Ordering::Relaxed) || active() {
        return f();
    }
    /// Ends the scope on return and on unwind.
    struct End;
    impl Drop for End {
        fn drop(&mut self) {
            SCOPE.with(|s| s.borrow_mut().take());
        }
    }
    SCOPE.with(|s| *s.borrow_mut() = Some(Scope::default()));
    let _end = End;
    f()
}

/// Whether a frozen-weights scope is open on this thread.
pub(super) fn active() -> bool {
    SCOPE.with(|s| s.borrow().is_some())
}

/// Keeps `t`'s storage alive until the scope ends, so that its values may be derived from
/// once (a contiguous f32 CPU tensor; anything else, or no open scope: nothing happens).
pub(super) fn pin(t: &Tensor) {
    if !active() {
        return;
    }
    let Ok(span) = super::with_cpu_f32(t, "frozen weights", "weight", |w| Ok(span(w))) else {
        return;
    };
    SCOPE.with(|s| {
        if let Some(s) = s.borrow_mut().as_mut() {
            if s.known.insert(span) {
                s.pinned.push(t.clone());
            }
        }
    });
}

fn span(w: &[f32]) -> (usize, usize) {
    (w.as_ptr() as usize, w.len())
}

/// A derived buffer: shared with the scope, or owned where nothing is kept.
pub(super) enum Kept {
    Shared(Arc<Vec<f32>>),
    Owned(Vec<f32>),
}

impl Deref for Kept {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            Kept::Shared(v) => v,
            Kept::Owned(v) => v,
        }
    }
}

/// `make()`, the `what` of `src` (which also depends on `params()`): inside a scope, and when
/// `src` is a pinned weight or a buffer derived from one, computed once and then shared;
/// otherwise computed afresh (and `params` never called: outside a scope this adds nothing
/// to the pass).
pub(super) fn derive(
    what: Derivation,
    src: &[f32],
    params: impl FnOnce() -> Vec<u32>,
    make: impl FnOnce() -> Vec<f32>,
) -> Kept {
    if !kept_source(src) {
        return Kept::Owned(make());
    }
    let key = Key::new(what, src, params());
    shared(key, make)
}

/// For kernels that can read `src` in place, at some cost, or a derived copy faster, with the
/// same results: the kept copy (as [`derive()`]) from the second time it is asked for in a
/// scope, `None` (nothing computed: read in place) the first time and wherever nothing is
/// kept. A scope of one pass (a single input gradient) then makes no copy it would read only
/// once; an attack or Integrated Gradients makes it in its second pass.
pub(super) fn derive_if_kept(
    what: Derivation,
    src: &[f32],
    params: impl FnOnce() -> Vec<u32>,
    make: impl FnOnce() -> Vec<f32>,
) -> Option<Kept> {
    if !kept_source(src) {
        return None;
    }
    let key = Key::new(what, src, params());
    let second = SCOPE.with(|s| {
        let mut s = s.borrow_mut();
        let s = s.as_mut()?;
        Some(s.derived.contains_key(&key) || !s.asked.insert(key.clone()))
    });
    second?.then(|| shared(key, make))
}

/// Whether what is derived from `src` is kept: inside a scope, `src` a pinned weight or
/// derived from one.
fn kept_source(src: &[f32]) -> bool {
    let src_span = span(src);
    SCOPE.with(|s| {
        s.borrow()
            .as_ref()
            .is_some_and(|s| s.known.contains(&src_span))
    })
}

/// The scope's derived buffer for `key` (of a [`kept_source`]), made now if it has none yet.
fn shared(key: Key, make: impl FnOnce() -> Vec<f32>) -> Kept {
    let hit = SCOPE.with(|s| {
        let mut s = s.borrow_mut();
        let s = s.as_mut()?;
        let hit = s.derived.get(&key).cloned();
        s.hits += usize::from(hit.is_some());
        hit
    });
    match hit {
        Some(v) => Kept::Shared(v),
        None => {
            // computed without the scope borrowed (`make` runs the rayon pool)
            let v = Arc::new(make());
            SCOPE.with(|s| {
                if let Some(s) = s.borrow_mut().as_mut() {
                    s.known.insert(span(&v));
                    s.derived.insert(key, v.clone());
                }
            });
            Kept::Shared(v)
        }
    }
}

/// `make()`, a pair of tensors computed from a model's parameters (a BatchNorm's fold into a
/// scale and shift per channel), named by `owner`, the id of a parameter tensor they belong
/// to (ids are never reused): inside a scope computed once and then shared, so that a PGD
/// attack or an attribution folds each BatchNorm once, not once per pass (on CUDA each fold
/// is a chain of small kernels); outside a scope computed afresh. Any device.
pub fn kept_pair<E>(
    owner: TensorId,
    make: impl FnOnce() -> Result<(Tensor, Tensor), E>,
) -> Result<(Tensor, Tensor), E> {
    if !active() {
        return make();
    }
    let hit = SCOPE.with(|s| {
        s.borrow()
            .as_ref()
            .and_then(|s| s.pairs.get(&owner).cloned())
    });
    if let Some(p) = hit {
        return Ok(p);
    }
    let p = make()?;
    SCOPE.with(|s| {
        if let Some(s) = s.borrow_mut().as_mut() {
            s.pairs.insert(owner, p.clone());
        }
    });
    Ok(p)
}

/// The scale bits of an input gradient's flipped kernel, as [`derive()`]'s params (a leading
/// tag tells "no scale" from a scale).
pub(super) fn scale_params(scale: Option<&[f32]>) -> Vec<u32> {
    match scale {
        None => vec![0],
        Some(s) => std::iter::once(1)
            .chain(s.iter().map(|v| v.to_bits()))
            .collect(),
    }
}

/// How many derived buffers this thread's scope has handed out again (tests).
#[cfg(test)]
pub(super) fn hits() -> usize {
    SCOPE.with(|s| s.borrow().as_ref().map_or(0, |s| s.hits))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn derives_once_per_pinned_weight_and_never_for_others() {
        let w = Tensor::new(&[1f32, 2., 3., 4.], &Device::Cpu).unwrap();
        let calls = std::cell::Cell::new(0);
        let make = || {
            calls.set(calls.get() + 1);
            vec![7.0]
        };
        let read = |t: &Tensor| t.to_vec1::<f32>().unwrap();
        with_frozen_weights(|| {
            // not pinned: computed each time
            let v = read(&w);
            derive(Derivation::Flipped, &v, Vec::new, make);
            derive(Derivation::Flipped, &v, Vec::new, make);
            assert_eq!((calls.get(), hits()), (2, 0));
            pin(&w);
            super::super::with_cpu_f32(&w, "t", "w", |s| {
                let a = derive(Derivation::Flipped, s, || vec![1], make);
                let b = derive(Derivation::Flipped, s, || vec![1], make);
                assert_eq!((calls.get(), hits()), (3, 1));
                assert!(
                    matches!((&a, &b), (Kept::Shared(x), Kept::Shared(y)) if Arc::ptr_eq(x, y))
                );
                // other params or another derivation: computed again
                derive(Derivation::Flipped, s, || vec![2], make);
                derive(Derivation::Winograd, s, || vec![1], make);
                assert_eq!(calls.get(), 5);
                // a buffer derived from a pinned weight qualifies too
                derive(Derivation::Winograd, &a, Vec::new, make);
                derive(Derivation::Winograd, &a, Vec::new, make);
                assert_eq!((calls.get(), hits()), (6, 2));
                Ok(())
            })
            .unwrap();
            // nested scopes share the outer one
            with_frozen_weights(|| assert_eq!(hits(), 2));
            // only where kept: nothing for a buffer not pinned; for a pinned one what was
            // kept already, else nothing the first time and a kept copy the second
            let v = read(&w);
            assert!(derive_if_kept(Derivation::Flipped, &v, Vec::new, make).is_none());
            assert!(derive_if_kept(Derivation::Flipped, &v, Vec::new, make).is_none());
            super::super::with_cpu_f32(&w, "t", "w", |s| {
                let k = derive_if_kept(Derivation::Flipped, s, || vec![1], make);
                assert!(matches!(k.as_deref(), Some([7.0])));
                assert_eq!((calls.get(), hits()), (6, 3));
                assert!(derive_if_kept(Derivation::Flipped, s, || vec![3], make).is_none());
                assert_eq!(calls.get(), 6);
                let k = derive_if_kept(Derivation::Flipped, s, || vec![3], make);
                assert!(matches!(k.as_deref(), Some([7.0])));
                assert_eq!((calls.get(), hits()), (7, 3));
                let k = derive_if_kept(Derivation::Flipped, s, || vec![3], make);
                assert!(matches!(k.as_deref(), Some([7.0])));
                assert_eq!((calls.get(), hits()), (7, 4));
                Ok(())
            })
            .unwrap();
        });
        assert!(!active());
        // after the scope: nothing kept
        super::super::with_cpu_f32(&w, "t", "w", |s| {
            derive(Derivation::Flipped, s, || vec![1], make);
            assert!(derive_if_kept(Derivation::Flipped, s, || vec![1], make).is_none());
            assert!(derive_if_kept(Derivation::Flipped, s, || vec![1], make).is_none());
            Ok(())
        })
        .unwrap();
        assert_eq!(calls.get(), 8);
    }

    #[test]
    fn pairs_are_made_once_per_owner_inside_a_scope_only() {
        let dev = Device::Cpu;
        let (a, b) = (
            Tensor::new(&[1f32], &dev).unwrap(),
            Tensor::new(&[2f32], &dev).unwrap(),
        );
        let calls = std::cell::Cell::new(0);
        let make = |v: f32| {
            calls.set(calls.get() + 1);
            Ok::<_, candle_core::Error>((
                Tensor::new(&[v], &dev).unwrap(),
                Tensor::new(&[-v], &dev).unwrap(),
            ))
        };
        let first = |p: (Tensor, Tensor)| p.0.to_vec1::<f32>().unwrap()[0];
        // outside a scope: made every time
        assert_eq!(first(kept_pair(a.id(), || make(1.0)).unwrap()), 1.0);
        assert_eq!(first(kept_pair(a.id(), || make(2.0)).unwrap()), 2.0);
        assert_eq!(calls.get(), 2);
        with_frozen_weights(|| {
            assert_eq!(first(kept_pair(a.id(), || make(3.0)).unwrap()), 3.0);
            // the same owner: the kept pair, `make` not called
            assert_eq!(first(kept_pair(a.id(), || make(4.0)).unwrap()), 3.0);
            // another owner: its own pair
            assert_eq!(first(kept_pair(b.id(), || make(5.0)).unwrap()), 5.0);
            assert_eq!(calls.get(), 4);
            // an error is passed on and nothing kept
            let c = Tensor::new(&[0f32], &dev).unwrap();
            let e = kept_pair(c.id(), || Err::<(Tensor, Tensor), _>("no"));
            assert_eq!(e.unwrap_err(), "no");
            assert_eq!(first(kept_pair(c.id(), || make(7.0)).unwrap()), 7.0);
            assert_eq!(calls.get(), 5);
        });
        // after the scope: nothing kept
        assert_eq!(first(kept_pair(a.id(), || make(6.0)).unwrap()), 6.0);
        assert_eq!(calls.get(), 6);
    }

    #[test]
    fn the_scope_ends_when_its_closure_panics() {
        let r = std::panic::catch_unwind(|| with_frozen_weights(|| panic!("boom")));
        assert!(r.is_err());
        assert!(!active());
    }
}
