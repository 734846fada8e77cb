//! Optimizers against PyTorch trajectories, schedules against PyTorch's schedulers, and the
//! state save/restore used to resume training.

mod common;
#[path = "fixtures/optim_trajectories.rs"]
mod fixtures;

use cnnkit::optim::{LrSchedule, Optimizer, OptimizerKind, SgdConfig};
use common::{assert_close, par};

/// Every optimizer configuration follows PyTorch's parameter trajectory over several steps
/// (13 parameters: one full SIMD lane and a tail).
#[test]
fn optimizers_follow_torch_trajectories() {
    for c in fixtures::cases() {
        let n = c.p0.len();
        let mut opt = Optimizer::new(c.kind, n).unwrap();
        let mut p = c.p0.to_vec();
        for s in 0..fixtures::STEPS {
            par(|| opt.step(&mut p, &c.grads[s * n..][..n])).unwrap();
            assert_close(
                &format!("{} step {}", c.name, s + 1),
                &p,
                &c.want[s * n..][..n],
                2e-6,
                2e-5,
            )
            .unwrap();
        }
    }
}

#[test]
fn schedules_follow_torch_schedulers() {
    for (sched, want) in [fixtures::STEP_LR, fixtures::COSINE_LR] {
        let got: Vec<f32> = (0..want.len()).map(|e| sched.lr_at(0.1, e)).collect();
        assert_close(&format!("{sched:?}"), &got, want, 1e-7, 1e-6).unwrap();
    }
    assert_eq!(LrSchedule::Constant.lr_at(0.3, 99), 0.3);
    // The chainable form the trainer runs (each epoch's rate from the one before, as
    // scheduler.step() does) follows the same trajectory, restarts of the cosine included.
    for (sched, want) in [fixtures::STEP_LR, fixtures::COSINE_LR] {
        let mut lr = 0.1f32;
        let mut got = vec![lr];
        for e in 1..want.len() {
            lr = sched.next_lr(lr, 0.1, e);
            got.push(lr);
        }
        assert_close(&format!("{sched:?} chained"), &got, want, 1e-7, 1e-5).unwrap();
    }
    let cos = LrSchedule::Cosine {
        t_max: 4,
        eta_min: 0.01,
    };
    let mut lr = 0.1f32;
    for e in 1..40 {
        lr = cos.next_lr(lr, 0.1, e);
        let want = cos.lr_at(0.1, e);
        assert!((lr - want).abs() <= 1e-6, "epoch {e}: {lr} vs {want}");
    }
    // Zero step sizes are refused, as PyTorch's schedulers divide by them.
    for bad in ["cosine:0", "step:0:0.5", "step:2:nan", "cosine:3:inf"] {
        assert!(bad.parse::<LrSchedule>().is_err(), "{bad}");
    }
}

/// Saving the state and step count mid-way and loading them into a fresh optimizer continues the
/// trajectory bit for bit.
#[test]
fn state_round_trip_resumes_exactly() {
    for c in fixtures::cases() {
        let n = c.p0.len();
        let grad = |s: usize| &c.grads[(s % fixtures::STEPS) * n..][..n];
        let mut a = Optimizer::new(c.kind, n).unwrap();
        let mut pa = c.p0.to_vec();
        for s in 0..3 {
            a.step(&mut pa, grad(s)).unwrap();
        }
        let mut b = Optimizer::new(c.kind, n).unwrap();
        let saved: Vec<(&str, Vec<f32>)> = a
            .state()
            .into_iter()
            .map(|(k, v)| (k, v.to_vec()))
            .collect();
        let view: Vec<(&str, &[f32])> = saved.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        b.load_state(a.steps(), &view).unwrap();
        let mut pb = pa.clone();
        for s in 3..6 {
            a.step(&mut pa, grad(s)).unwrap();
            b.step(&mut pb, grad(s)).unwrap();
        }
        assert_eq!(pa, pb, "{}", c.name);
    }
}

#[test]
fn invalid_configurations_are_rejected() {
    for kind in [
        OptimizerKind::Sgd(SgdConfig {
            lr: -1.0,
            ..Default::default()
        }),
        OptimizerKind::Sgd(SgdConfig {
            nesterov: true,
            ..Default::default()
        }),
        OptimizerKind::Sgd(SgdConfig {
            lr: f32::NAN,
            ..Default::default()
        }),
    ] {
        assert!(Optimizer::new(kind, 3).is_err(), "{kind:?}");
    }
    let mut adam = OptimizerKind::by_name("adam").unwrap();
    if let OptimizerKind::Adam(c) = &mut adam {
        c.betas.0 = 1.0;
    }
    assert!(Optimizer::new(adam, 3).is_err());
    assert!(OptimizerKind::by_name("lbfgs").is_err());
    let mut opt = Optimizer::new(OptimizerKind::by_name("sgd").unwrap(), 3).unwrap();
    assert!(opt.step(&mut [0.0; 2], &[0.0; 2]).is_err());
    assert!(
        opt.load_state(1, &[("momentum_buffer", &[0.0; 2])]).is_ok(),
        "plain SGD has no state"
    );
    let mut adam = Optimizer::new(OptimizerKind::by_name("adam").unwrap(), 3).unwrap();
    assert!(
        adam.load_state(1, &[("exp_avg", &[0.0; 3])]).is_err(),
        "exp_avg_sq missing"
    );
}
