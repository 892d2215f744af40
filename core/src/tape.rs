//! The fused path's own backward over a network's trunk, without candle's per-node gradient
//! bookkeeping.
//!
//! Candle's `Tensor::backward` adds every gradient contribution to a stored sum and, where there
//! is none yet, first stores `zeros_like` the tensor (`GradStore::or_insert` in candle 0.11.1):
//! each activation-sized gradient costs an allocation, a zeroing pass and an add pass, run on
//! the calling thread while the kernel threads wait. With the zero fills, that was 12% of
//! a 10%-kept ResNet20 step's samples at 2 threads, about a fifth of its wall time.
//!
//! While [`record`] runs a forward pass, every fused op applied on this thread (the ops of
//! [`crate::fused`]) is also written to a tape. The network then [`cut`]s the tape where its
//! trunk of fused ops ends: if every tracked input of every recorded op is a variable or an
//! earlier op's output, the trunk's output is replaced by a fresh [`Var`] holding a copy of it,
//! so candle's backward stops there. [`Tape::backward`] then takes that variable's gradient and
//! runs the recorded ops' backward passes in reverse, keeping the first gradient of a tensor as
//! it comes and adding later ones to it; the variables' gradients go into the same
//! [`GradStore`]. Everything else (the op's own backward, which gradients exist) is as under
//! candle's backward, so the values are the same: a sum of two gradients is the same in either
//! order, and starting it from zeros adds nothing (ResNet tensors have at most two consumers).
//!
//! The forward pass still builds candle's graph as always, so when the check at the cut fails
//! (an op that is not fused feeds the trunk, or there is nothing to cut) the tape is dropped
//! and candle's backward runs over the whole net as before.

use crate::Result;
use candle_core::{backprop::GradStore, CustomOp1, CustomOp2, CustomOp3, Tensor, TensorId, Var};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

type Op1 = Arc<Box<dyn CustomOp1 + Send + Sync>>;
type Op2 = Arc<Box<dyn CustomOp2 + Send + Sync>>;
type Op3 = Arc<Box<dyn CustomOp3 + Send + Sync>>;

/// One recorded op: the op, its inputs and its output.
enum Entry {
    One(Op1, Tensor, Tensor),
    Two(Op2, [Tensor; 2], Tensor),
    Three(Op3, [Tensor; 3], Tensor),
}

impl Entry {
    fn output(&self) -> &Tensor {
        match self {
            Entry::One(_, _, y) | Entry::Two(_, _, y) | Entry::Three(_, _, y) => y,
        }
    }

    fn inputs(&self) -> &[Tensor] {
        match self {
            Entry::One(_, x, _) => std::slice::from_ref(x),
            Entry::Two(_, xs, _) => xs,
            Entry::Three(_, xs, _) => xs,
        }
    }

    /// The op's backward for output gradient `g`: one optional gradient per input.
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        Ok(match self {
            Entry::One(op, x, y) => vec![op.bwd(x, y, g)?],
            Entry::Two(op, [a, b], y) => {
                let (ga, gb) = op.bwd(a, b, y, g)?;
                vec![ga, gb]
            }
            Entry::Three(op, [a, b, c], y) => {
                let (ga, gb, gc) = op.bwd(a, b, c, y, g)?;
                vec![ga, gb, gc]
            }
        })
    }
}

/// Where a tape stands.
#[derive(Default)]
enum End {
    /// Recording.
    #[default]
    Open,
    /// Cut at a trunk output: `(the variable, the output it copies)`.
    Cut(Var, Tensor),
    /// The check at the cut failed; candle's backward does all the work.
    Dropped,
}

/// The recorded trunk of one forward pass; see the [module docs](self).
#[derive(Default)]
pub struct Tape {
    entries: Vec<Entry>,
    end: End,
}

thread_local! {
    /// The tape being recorded on this thread, if any.
    static RECORDING: RefCell<Option<Tape>> = const { RefCell::new(None) };
}

/// Puts back the recording that was current before [`record`] (usually none) when dropped,
/// also when the forward pass fails.
struct Restore(Option<Tape>);

impl Drop for Restore {
    fn drop(&mut self) {
        let prev = self.0.take();
        RECORDING.with(|r| *r.borrow_mut() = prev);
    }
}

/// Runs the forward pass `f` with this thread's fused ops recorded, and returns its result
/// with the tape (a no-op in [`Tape::backward`] unless the model [`cut`] it). A `record`
/// inside `f` records its own pass and leaves the outer one as it was.
pub fn record<R>(f: impl FnOnce() -> Result<R>) -> Result<(R, Tape)> {
    let _restore = Restore(RECORDING.with(|r| r.borrow_mut().replace(Tape::default())));
    let out = f()?;
    let tape = RECORDING
        .with(|r| r.borrow_mut().take())
        .unwrap_or_default();
    Ok((out, tape))
}

/// Adds `entry` to this thread's tape while one records (inside [`record`], before a [`cut`]).
fn push(entry: Entry) {
    RECORDING.with(|r| {
        if let Some(t) = r.borrow_mut().as_mut() {
            if matches!(t.end, End::Open) {
                t.entries.push(entry);
            }
        }
    })
}

/// `x.apply_op1(op)`, recorded when this thread records.
pub(crate) fn apply1(x: &Tensor, op: impl CustomOp1 + Send + Sync + 'static) -> Result<Tensor> {
    let op: Op1 = Arc::new(Box::new(op));
    let y = x.apply_op1_arc(op.clone())?;
    push(Entry::One(op, x.clone(), y.clone()));
    Ok(y)
}

/// `a.apply_op2(b, op)`, recorded when this thread records.
pub(crate) fn apply2(
    a: &Tensor,
    b: &Tensor,
    op: impl CustomOp2 + Send + Sync + 'static,
) -> Result<Tensor> {
    let op: Op2 = Arc::new(Box::new(op));
    let y = a.apply_op2_arc(b, op.clone())?;
    push(Entry::Two(op, [a.clone(), b.clone()], y.clone()));
    Ok(y)
}

/// `a.apply_op3(b, c, op)`, recorded when this thread records.
pub(crate) fn apply3(
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    op: impl CustomOp3 + Send + Sync + 'static,
) -> Result<Tensor> {
    let op: Op3 = Arc::new(Box::new(op));
    let y = a.apply_op3_arc(b, c, op.clone())?;
    push(Entry::Three(
        op,
        [a.clone(), b.clone(), c.clone()],
        y.clone(),
    ));
    Ok(y)
}

/// Ends the recorded trunk at `x`: returns a fresh variable holding a copy of `x` when the tape
/// covers everything `x`'s gradient flows into, else drops the tape and returns `x` itself
/// (candle's backward then runs over the whole net). Returns `x` when nothing is recorded.
pub fn cut(x: &Tensor) -> Result<Tensor> {
    RECORDING.with(|r| {
        let mut r = r.borrow_mut();
        let Some(tape) = r.as_mut().filter(|t| matches!(t.end, End::Open)) else {
            return Ok(x.clone());
        };
        if !tape.covers(x) {
            tape.entries.clear();
            tape.end = End::Dropped;
            return Ok(x.clone());
        }
        let var = Var::from_tensor(&x.detach())?;
        let out = var.as_tensor().clone();
        tape.end = End::Cut(var, x.clone());
        Ok(out)
    })
}

impl Tape {
    /// Whether `x` is a recorded output and every tracked input of every recorded op is a
    /// variable or an earlier op's output, i.e. the tape holds every path of `x`'s gradient.
    fn covers(&self, x: &Tensor) -> bool {
        let mut outputs = HashSet::new();
        for e in &self.entries {
            let known = e
                .inputs()
                .iter()
                .all(|t| !t.track_op() || t.is_variable() || outputs.contains(&t.id()));
            if !known {
                return false;
            }
            outputs.insert(e.output().id());
        }
        outputs.contains(&x.id())
    }

    /// Whether the forward pass was cut, so [`Tape::backward`] has work to do.
    pub fn is_cut(&self) -> bool {
        matches!(self.end, End::Cut(..))
    }

    /// Finishes `grads` (from candle's backward of a loss over the cut model) through the
    /// recorded trunk: the variables' gradients are added to `grads`, and the cut variable's
    /// own entry is removed. A no-op for an uncut tape.
    pub fn backward(self, grads: &mut GradStore) -> Result<()> {
        let End::Cut(var, source) = self.end else {
            return Ok(());
        };
        let Some(g) = grads.remove(var.as_tensor()) else {
            return Ok(());
        };
        let mut pending: HashMap<TensorId, Tensor> = HashMap::new();
        pending.insert(source.id(), g);
        for e in self.entries.iter().rev() {
            let Some(g) = pending.remove(&e.output().id()) else {
                continue;
            };
            for (input, grad) in e.inputs().iter().zip(e.backward(&g)?) {
                let Some(grad) = grad else { continue };
                if input.is_variable() {
                    let sum = match grads.remove(input) {
                        Some(prev) => crate::cpu::add(&prev, &grad)?,
                        None => grad,
                    };
                    grads.insert(input, sum);
                } else if input.track_op() {
                    let sum = match pending.remove(&input.id()) {
                        Some(prev) => crate::cpu::add(&prev, &grad)?,
                        None => grad,
                    };
                    pending.insert(input.id(), sum);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused;
    use candle_core::Device;

    /// `v`'s gradient of `sum(forward(v) * r)`, from candle's backward alone (`taped` false)
    /// or through a recorded and cut pass, and whether the pass was cut.
    fn gradient(
        forward: impl Fn(&Tensor) -> Result<Tensor>,
        v: &Var,
        r: &Tensor,
        taped: bool,
    ) -> (Vec<u32>, bool) {
        let (y, tape) = if taped {
            record(|| cut(&forward(v.as_tensor())?)).unwrap()
        } else {
            (forward(v.as_tensor()).unwrap(), Tape::default())
        };
        let cut = tape.is_cut();
        let mut grads = (y * r).unwrap().sum_all().unwrap().backward().unwrap();
        tape.backward(&mut grads).unwrap();
        let g: Vec<f32> = grads
            .get(v.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        (g.iter().map(|x| x.to_bits()).collect(), cut)
    }

    fn inputs() -> (Var, Tensor) {
        // Above the parallel add's size, so both of its paths run.
        let shape = (4, 20_000);
        let v = Var::from_tensor(&Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()).unwrap();
        (v, Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap())
    }

    #[test]
    fn a_covered_trunk_is_cut_and_gives_candles_gradient() {
        // `v` feeds two ops, so the tape sums two contributions, as candle does.
        let forward = |v: &Tensor| fused::add_elu(&fused::elu(v, 1.0)?, v, 0.5);
        let (v, r) = inputs();
        let (want, _) = gradient(forward, &v, &r, false);
        let (got, cut) = gradient(forward, &v, &r, true);
        assert!(cut, "every op is fused: the tape must take the pass");
        assert!(want.iter().any(|b| *b != 0));
        assert_eq!(got, want);
    }

    #[test]
    fn a_candle_op_inside_the_trunk_leaves_it_to_candle() {
        // The `exp` between the fused ops is not recorded: the check at the cut must drop the
        // tape (cutting would lose the first ELU's part of the gradient).
        let forward = |v: &Tensor| fused::elu(&fused::elu(v, 1.0)?.exp()?, 1.0);
        let (v, r) = inputs();
        let (want, _) = gradient(forward, &v, &r, false);
        let (got, cut) = gradient(forward, &v, &r, true);
        assert!(!cut);
        assert_eq!(got, want);
    }
}
