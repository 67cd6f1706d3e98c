"""Tests for lib.optim.spam.AdamWSPAM against independent references."""

from __future__ import annotations

import copy
import io
import math
import statistics

import pytest
import torch

from lib.optim.spam import AdamWSPAM, warmup_scale

LR = 1e-2
BETAS = (0.9, 0.95)
EPS = 1e-8


# --------------------------------------------------------------------------
# Independent reference: plain formulas, float64, one element at a time.
# --------------------------------------------------------------------------


def ref_ramp(k, warmup_steps):
    if warmup_steps <= 0:
        return 1.0
    kk = min(k, warmup_steps)
    return 0.01 + 0.99 * 0.5 * (1 - math.cos(math.pi * kk / warmup_steps))


class RefSPAM:
    """SPAM written from the formulas, element by element, in float64."""

    def __init__(self, params, wds, lr=LR, betas=BETAS, eps=EPS, theta=50.0,
                 enable_clip=True, clip_delay=20, periodic_reset=True,
                 reset_interval=1000, warmup=True, warmup_steps=100):
        self.p = [[float(x) for x in t.detach().double().flatten()] for t in params]
        self.wds = wds
        self.m = [[0.0] * len(x) for x in self.p]
        self.v = [[0.0] * len(x) for x in self.p]
        self.lr, (self.b1, self.b2), self.eps = lr, betas, eps
        self.theta, self.enable_clip, self.clip_delay = theta, enable_clip, clip_delay
        self.periodic_reset, self.reset_interval = periodic_reset, reset_interval
        self.warmup, self.warmup_steps = warmup, warmup_steps
        self.t = 0
        self.k = 0
        self.resets = 0
        self.clipped = 0

    def step(self, grads):
        self.t += 1
        if self.periodic_reset and self.t > 1 and (self.t - 1) % self.reset_interval == 0:
            self.m = [[0.0] * len(x) for x in self.p]
            self.v = [[0.0] * len(x) for x in self.p]
            self.resets += 1
            self.k = 0
        self.k += 1
        scale = ref_ramp(self.k, self.warmup_steps) if (self.warmup and self.resets) else 1.0
        clip = self.enable_clip and self.k > self.clip_delay
        for i, g_t in enumerate(grads):
            g_list = [float(x) for x in g_t.double().flatten()]
            wd = self.wds[i]
            for j, g in enumerate(g_list):
                v_prev = self.v[i][j]
                if clip and g * g > self.theta * v_prev:
                    g = math.copysign(math.sqrt(self.theta * v_prev), g)
                    self.clipped += 1
                self.p[i][j] *= 1 - self.lr * wd
                self.m[i][j] = self.b1 * self.m[i][j] + (1 - self.b1) * g
                self.v[i][j] = self.b2 * self.v[i][j] + (1 - self.b2) * g * g
                mhat = self.m[i][j] / (1 - self.b1 ** self.t)
                vhat = self.v[i][j] / (1 - self.b2 ** self.t)
                self.p[i][j] -= scale * self.lr * mhat / (math.sqrt(vhat) + self.eps)

    def tensor(self, which, i, like):
        return torch.tensor(getattr(self, which)[i], dtype=torch.float64).view(like.shape)


def ref_spike_count(norms, threshold, window, min_samples=10):
    """Count spikes in a norm sequence with plain Python statistics."""
    need = max(2, min(min_samples, window))
    hist = []
    count = 0
    for x in norms:
        if len(hist) >= need:
            mean = statistics.fmean(hist)
            std = statistics.stdev(hist)
            if std > 0 and (x - mean) / std > threshold:
                count += 1
        hist.append(x)
        hist = hist[-window:]
    return count


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def make_params(seed=0, shapes=((4, 3), (5,))):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).requires_grad_() for s in shapes]


def grad_stream(n, seed=1, shapes=((4, 3), (5,))):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=g, dtype=torch.float64) for s in shapes] for _ in range(n)]


def run_opt(opt, params, grads_seq):
    for grads in grads_seq:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()


def make_pair(wds=(0.1, 0.0), seed=0, **kw):
    """Our optimizer (float64 params, two groups) + the reference, same init."""
    params = make_params(seed)
    groups = [{"params": [params[0]], "weight_decay": wds[0]},
              {"params": [params[1]], "weight_decay": wds[1]}]
    opt = AdamWSPAM(groups, lr=LR, betas=BETAS, eps=EPS, **kw)
    ref_kw = {k: v for k, v in kw.items() if k not in ("spike_threshold", "spike_window")}
    ref = RefSPAM(params, list(wds), **ref_kw)
    return opt, params, ref


def assert_matches_ref(opt, params, ref, rtol=1e-9, atol=1e-12):
    for i, p in enumerate(params):
        st = opt.state[p]
        torch.testing.assert_close(p.detach(), ref.tensor("p", i, p), rtol=rtol, atol=atol)
        torch.testing.assert_close(st["exp_avg"], ref.tensor("m", i, p), rtol=rtol, atol=atol)
        torch.testing.assert_close(st["exp_avg_sq"], ref.tensor("v", i, p), rtol=rtol, atol=atol)


def steady_grad_stream(n, seed=1, shapes=((4, 3), (5,))):
    """Per-element magnitudes that stay within +-10%: never clipped at theta=50."""
    g = torch.Generator().manual_seed(seed)
    base = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    return [[b * (1 + 0.1 * torch.randn(b.shape, generator=g, dtype=torch.float64))
             for b in base] for _ in range(n)]


def spiky_grads(n_before, spike_at, factor=1000.0, seed=1):
    """Steady gradients with one huge spike at (0-based) step spike_at."""
    seq = steady_grad_stream(n_before, seed=seed)
    seq[spike_at] = [g * factor for g in seq[spike_at]]
    return seq


# --------------------------------------------------------------------------
# Plain AdamW equivalence
# --------------------------------------------------------------------------


@pytest.mark.parametrize("warmup", [True, False])
def test_disabled_features_match_torch_adamw(warmup):
    torch.manual_seed(0)
    model_a = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    model_b = copy.deepcopy(model_a)

    def groups(model):
        decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
        return [{"params": decay, "weight_decay": 0.1},
                {"params": no_decay, "weight_decay": 0.0}]

    ref = torch.optim.AdamW(groups(model_a), lr=3e-3, betas=(0.9, 0.95), eps=1e-8,
                            foreach=False)
    ours = AdamWSPAM(groups(model_b), lr=3e-3, betas=(0.9, 0.95), eps=1e-8,
                     enable_clip=False, periodic_reset=False, warmup=warmup,
                     clip_delay=0, reset_interval=3, warmup_steps=10)
    gen = torch.Generator().manual_seed(3)
    for step in range(30):
        x = torch.randn(16, 6, generator=gen)
        y = torch.randn(16, 3, generator=gen)
        if step == 15:
            x = x * 100  # a gradient spike: must not be clipped
        for model, opt in ((model_a, ref), (model_b, ours)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(pb, pa, rtol=0, atol=0)
        torch.testing.assert_close(ours.state[pb]["exp_avg"], ref.state[pa]["exp_avg"],
                                   rtol=0, atol=0)
        torch.testing.assert_close(ours.state[pb]["exp_avg_sq"], ref.state[pa]["exp_avg_sq"],
                                   rtol=0, atol=0)
    s = ours.stats()
    assert s["clip_count"] == 0 and s["reset_count"] == 0


def test_reference_matches_when_everything_on():
    """All features together over several resets, against the reference."""
    kw = dict(theta=5.0, clip_delay=3, reset_interval=7, warmup_steps=4)
    opt, params, ref = make_pair(**kw)
    seq = grad_stream(30)
    for i in (10, 19, 25):
        seq[i] = [g * 50 for g in seq[i]]
    for grads in seq:
        run_opt(opt, params, [grads])
        ref.step(grads)
        assert_matches_ref(opt, params, ref)
    assert opt.stats()["clip_count"] == ref.clipped > 0
    assert opt.stats()["reset_count"] == ref.resets == 4


# --------------------------------------------------------------------------
# Clipping
# --------------------------------------------------------------------------


def _clip_run(n=8, spike_at=6, **kw):
    kw.setdefault("periodic_reset", False)
    kw.setdefault("clip_delay", 3)
    opt, params, ref = make_pair(**kw)
    seq = spiky_grads(n, spike_at)
    for grads in seq[:spike_at]:
        run_opt(opt, params, [grads])
        ref.step(grads)
    if kw.get("theta", 50.0) >= 50.0:
        assert opt.stats()["clip_count"] == 0  # steady gradients are never clipped
    v_before = [opt.state[p]["exp_avg_sq"].clone() for p in params]
    m_before = [opt.state[p]["exp_avg"].clone() for p in params]
    run_opt(opt, params, [seq[spike_at]])
    ref.step(seq[spike_at])
    return opt, params, ref, seq[spike_at], v_before, m_before


def test_spike_is_clipped_to_sqrt_theta_v():
    theta = 50.0
    opt, params, ref, spike, v_before, m_before = _clip_run(theta=theta)
    assert_matches_ref(opt, params, ref)
    for i, p in enumerate(params):
        # Every element of the 1000x spike exceeds the bound: the gradient fed
        # into the moments is exactly sign(g) * sqrt(theta * v_prev).
        clipped = torch.sign(spike[i]) * torch.sqrt(theta * v_before[i])
        assert (spike[i] ** 2 > theta * v_before[i]).all()
        torch.testing.assert_close(opt.state[p]["exp_avg"],
                                   BETAS[0] * m_before[i] + (1 - BETAS[0]) * clipped)
        torch.testing.assert_close(opt.state[p]["exp_avg_sq"],
                                   BETAS[1] * v_before[i] + (1 - BETAS[1]) * clipped ** 2)
    assert opt.stats()["clip_count"] == ref.clipped == sum(s.numel() for s in spike)


def test_no_clip_when_disabled():
    opt, params, ref, spike, v_before, m_before = _clip_run(enable_clip=False)
    assert_matches_ref(opt, params, ref)
    for i, p in enumerate(params):
        torch.testing.assert_close(opt.state[p]["exp_avg_sq"],
                                   BETAS[1] * v_before[i] + (1 - BETAS[1]) * spike[i] ** 2)
    assert opt.stats()["clip_count"] == 0
    clipped_opt = _clip_run(enable_clip=True)[0]
    assert not torch.allclose(opt.state[params[0]]["exp_avg_sq"],
                              clipped_opt.state[clipped_opt.param_groups[0]["params"][0]]["exp_avg_sq"])


def test_theta_changes_result():
    a = _clip_run(theta=50.0)
    b = _clip_run(theta=5.0)
    assert_matches_ref(*b[:3])
    pa, pb = a[1][0], b[1][0]
    assert not torch.allclose(a[0].state[pa]["exp_avg_sq"], b[0].state[pb]["exp_avg_sq"])
    assert not torch.allclose(pa, pb)


def test_partial_clip_counts_elements():
    """Only the spiking elements are clipped and counted."""
    opt, params, ref = make_pair(periodic_reset=False, clip_delay=2)
    seq = steady_grad_stream(6)
    seq[4][0] = seq[4][0].clone()
    seq[4][0][1, 2] *= 1000
    seq[4][0][3, 0] *= -1000
    seq[4][1][4] *= 1000
    for grads in seq:
        run_opt(opt, params, [grads])
        ref.step(grads)
    assert_matches_ref(opt, params, ref)
    assert opt.stats()["clip_count"] == ref.clipped == 3


def test_spike_before_clip_delay_not_clipped():
    # clip_delay=10: the spike at step 7 (1-based) falls inside the delay.
    opt, params, ref, spike, v_before, m_before = _clip_run(clip_delay=10)
    assert_matches_ref(opt, params, ref)
    for i, p in enumerate(params):
        torch.testing.assert_close(opt.state[p]["exp_avg_sq"],
                                   BETAS[1] * v_before[i] + (1 - BETAS[1]) * spike[i] ** 2)
    assert opt.stats()["clip_count"] == 0
    # Same spike with clip_delay=6: step 7 is the first clipped step.
    opt6 = _clip_run(clip_delay=6)[0]
    assert opt6.stats()["clip_count"] == sum(s.numel() for s in spike)


def test_clip_delay_restarts_after_reset():
    # Reset at step 6 (reset_interval=5), clip_delay=3: a spike at step 8
    # (k=3) is not clipped, one at step 9 (k=4) is.
    for spike_step, expect_clipped in ((8, False), (9, True)):
        opt, params, ref = make_pair(reset_interval=5, clip_delay=3, warmup=False)
        seq = spiky_grads(10, spike_step - 1)
        for grads in seq:
            run_opt(opt, params, [grads])
            ref.step(grads)
        assert_matches_ref(opt, params, ref)
        n = opt.stats()["clip_count"]
        assert n == ref.clipped
        assert (n >= sum(g.numel() for g in seq[0])) == expect_clipped


# --------------------------------------------------------------------------
# Periodic reset
# --------------------------------------------------------------------------


def test_reset_zeroes_moments_then_updates():
    opt, params, ref = make_pair(enable_clip=False, reset_interval=5, warmup=False)
    seq = grad_stream(6)
    for grads in seq[:5]:
        run_opt(opt, params, [grads])
        ref.step(grads)
    assert opt.stats()["reset_count"] == 0
    assert all(opt.state[p]["exp_avg"].abs().sum() > 0 for p in params)
    p_before = [p.detach().clone() for p in params]
    run_opt(opt, params, [seq[5]])  # step 6: reset, then update
    ref.step(seq[5])
    assert opt.stats()["reset_count"] == 1
    assert_matches_ref(opt, params, ref)
    wds = (0.1, 0.0)
    for i, p in enumerate(params):
        g = seq[5][i]
        m = (1 - BETAS[0]) * g
        v = (1 - BETAS[1]) * g * g
        torch.testing.assert_close(opt.state[p]["exp_avg"], m)
        torch.testing.assert_close(opt.state[p]["exp_avg_sq"], v)
        # Bias correction with the global step t=6, not 1.
        t = 6
        assert opt.state[p]["step"] == t
        expected = p_before[i] * (1 - LR * wds[i]) - LR * (m / (1 - BETAS[0] ** t)) / (
            torch.sqrt(v / (1 - BETAS[1] ** t)) + EPS)
        torch.testing.assert_close(p.detach(), expected)
        restarted = p_before[i] * (1 - LR * wds[i]) - LR * g / (g.abs() + EPS)
        assert not torch.allclose(p.detach(), restarted)


def test_no_reset_when_disabled():
    on, p_on, _ = make_pair(enable_clip=False, reset_interval=5, warmup=False)
    off, p_off, ref = make_pair(enable_clip=False, reset_interval=5, warmup=False,
                                periodic_reset=False)
    seq = grad_stream(12)
    run_opt(on, p_on, seq)
    run_opt(off, p_off, seq)
    for grads in seq:
        ref.step(grads)
    assert_matches_ref(off, p_off, ref)
    assert off.stats()["reset_count"] == 0
    assert on.stats()["reset_count"] == 2
    assert not torch.allclose(on.state[p_on[0]]["exp_avg"], off.state[p_off[0]]["exp_avg"])


@pytest.mark.parametrize("interval,steps,resets", [(3, 10, 3), (4, 10, 2), (5, 10, 1), (10, 10, 0)])
def test_reset_interval_changes_when(interval, steps, resets):
    opt, params, ref = make_pair(enable_clip=False, reset_interval=interval, warmup_steps=3)
    seq = grad_stream(steps)
    for grads in seq:
        run_opt(opt, params, [grads])
        ref.step(grads)
    assert opt.stats()["reset_count"] == resets == ref.resets
    assert_matches_ref(opt, params, ref)
    # The first moment only holds gradients since the last reset.
    last = ((steps - 1) // interval) * interval  # 0-based index of the reset step
    m = torch.zeros_like(seq[0][0])
    for g in seq[last:]:
        m = BETAS[0] * m + (1 - BETAS[0]) * g[0]
    torch.testing.assert_close(opt.state[params[0]]["exp_avg"], m)


# --------------------------------------------------------------------------
# Warm-up after reset
# --------------------------------------------------------------------------


def test_warmup_formula():
    assert warmup_scale(100, 100) == 1.0
    assert warmup_scale(250, 100) == 1.0
    assert warmup_scale(1, 100) == pytest.approx(0.01 + 0.99 * 0.5 * (1 - math.cos(math.pi / 100)))
    assert 0.01 < warmup_scale(1, 100) < 0.011
    vals = [warmup_scale(k, 20) for k in range(1, 21)]
    assert all(a < b for a, b in zip(vals, vals[1:]))
    assert warmup_scale(5, 0) == 1.0


def _warmup_run(n_steps, wd=(0.1, 0.1), **kw):
    kw.setdefault("enable_clip", False)
    kw.setdefault("reset_interval", 5)
    opt, params, ref = make_pair(wds=wd, **kw)
    seq = grad_stream(n_steps)
    deltas = []
    for grads in seq:
        before = [p.detach().clone() for p in params]
        run_opt(opt, params, [grads])
        ref.step(grads)
        deltas.append([p.detach() - b for p, b in zip(params, before)])
    return opt, params, ref, seq, deltas


def _adam_delta(p_before, m, v, t, wd, scale):
    """Parameter change of one AdamW step given post-update moments."""
    decayed = p_before * (1 - LR * wd)
    upd = LR * (m / (1 - BETAS[0] ** t)) / (torch.sqrt(v / (1 - BETAS[1] ** t)) + EPS)
    return decayed - scale * upd - p_before


def test_warmup_scales_update_after_reset():
    opt, params, ref = make_pair(wds=(0.1, 0.1), enable_clip=False, reset_interval=5,
                                 warmup_steps=4)
    seq = grad_stream(12)
    for t, grads in enumerate(seq, start=1):
        before = [p.detach().clone() for p in params]
        run_opt(opt, params, [grads])
        ref.step(grads)
        assert_matches_ref(opt, params, ref)
        # Steps 1-5: no warm-up (no reset yet); reset at 6 and 11.
        k = t if t <= 5 else (t - 6 + 1 if t <= 10 else t - 11 + 1)
        scale = 1.0 if t <= 5 else ref_ramp(k, 4)
        for p, b in zip(params, before):
            st = opt.state[p]
            expected = _adam_delta(b, st["exp_avg"], st["exp_avg_sq"], t, 0.1, scale)
            torch.testing.assert_close(p.detach() - b, expected)
        if t == 6:
            assert scale == pytest.approx(0.01 + 0.99 * 0.5 * (1 - math.cos(math.pi / 4)))
        if t in (9, 10):
            assert scale == 1.0


def test_warmup_disabled_is_unscaled():
    on = _warmup_run(6, warmup_steps=4)
    off = _warmup_run(6, warmup_steps=4, warmup=False)
    assert_matches_ref(*off[:3])
    # Step 6 (index 5) is the first after the reset.
    d_on, d_off = on[4][5][0], off[4][5][0]
    assert d_on.abs().sum() < 0.2 * d_off.abs().sum()
    # Before the reset both are identical.
    for t in range(5):
        assert torch.equal(on[4][t][0], off[4][t][0])
    # off's delta at step 6 is a plain, unscaled AdamW step.
    for i in range(2):
        st = off[0].state[off[1][i]]
        p_prev = off[1][i].detach() - off[4][5][i]
        expected = _adam_delta(p_prev, st["exp_avg"], st["exp_avg_sq"], 6, 0.1, 1.0)
        torch.testing.assert_close(off[4][5][i], expected)


def test_warmup_steps_changes_ramp():
    # No weight decay: the moments are the same in both runs, so the
    # parameter deltas differ exactly by the ratio of the ramps.
    a = _warmup_run(8, wd=(0.0, 0.0), warmup_steps=4)
    b = _warmup_run(8, wd=(0.0, 0.0), warmup_steps=50)
    assert_matches_ref(*a[:3])
    assert_matches_ref(*b[:3])
    for t in (6, 7, 8):  # k = 1, 2, 3 after the reset at step 6
        k = t - 5
        ratio = ref_ramp(k, 4) / ref_ramp(k, 50)
        for i in range(2):
            torch.testing.assert_close(a[4][t - 1][i], ratio * b[4][t - 1][i])
    assert ref_ramp(3, 4) / ref_ramp(3, 50) > 40


def test_warmup_does_not_scale_weight_decay():
    # Zero gradients after the reset: the Adam part is exactly zero (m = 0),
    # so the whole change is the decoupled weight decay, unscaled.
    opt, params, ref = make_pair(wds=(0.5, 0.5), enable_clip=False, reset_interval=5,
                                 warmup_steps=100)
    seq = grad_stream(5) + [[torch.zeros_like(g) for g in grad_stream(1)[0]]]
    for grads in seq[:5]:
        run_opt(opt, params, [grads])
    before = [p.detach().clone() for p in params]
    run_opt(opt, params, [seq[5]])
    assert opt.stats()["reset_count"] == 1
    for p, b in zip(params, before):
        torch.testing.assert_close(p.detach(), b * (1 - LR * 0.5), rtol=1e-15, atol=0)
    # And with a nonzero gradient the decay part is the same for warmup on/off.
    on = _warmup_run(6, wd=(0.5, 0.5), warmup_steps=100)
    off = _warmup_run(6, wd=(0.5, 0.5), warmup=False)
    for i in range(2):
        p_prev_on = on[1][i].detach() - on[4][5][i]
        st = on[0].state[on[1][i]]
        expected = _adam_delta(p_prev_on, st["exp_avg"], st["exp_avg_sq"], 6, 0.5,
                               ref_ramp(1, 100))
        torch.testing.assert_close(on[4][5][i], expected)
        st = off[0].state[off[1][i]]
        p_prev_off = off[1][i].detach() - off[4][5][i]
        expected = _adam_delta(p_prev_off, st["exp_avg"], st["exp_avg_sq"], 6, 0.5, 1.0)
        torch.testing.assert_close(off[4][5][i], expected)


# --------------------------------------------------------------------------
# Spike detection
# --------------------------------------------------------------------------


def _norm_run(norms, **kw):
    p = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    q = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    kw.setdefault("enable_clip", False)
    kw.setdefault("periodic_reset", False)
    opt = AdamWSPAM([p, q], lr=1e-3, **kw)
    direction_p = torch.tensor([1.0, -2.0, 0.5, 1.5], dtype=torch.float64)
    direction_q = torch.tensor([0.3, 1.0, -1.0], dtype=torch.float64)
    total = math.sqrt(direction_p.pow(2).sum().item() + direction_q.pow(2).sum().item())
    for n in norms:
        p.grad = direction_p * (n / total)
        q.grad = direction_q * (n / total)
        opt.step()
    return opt


def _steady(n, base=10.0):
    return [base + 0.5 * math.sin(1.7 * i) for i in range(n)]


def test_one_spike_counted():
    norms = _steady(30) + [100.0] + _steady(5)
    assert ref_spike_count(norms, 2.0, 100) == 1
    opt = _norm_run(norms)
    assert opt.stats()["spike_count"] == 1


def test_no_spike_on_steady_or_with_high_threshold():
    assert _norm_run(_steady(40)).stats()["spike_count"] == 0
    norms = _steady(30) + [100.0] + _steady(5)
    assert _norm_run(norms, spike_threshold=1e6).stats()["spike_count"] == 0


def test_too_few_samples_no_spike():
    # A big norm at step 6 has only 5 norms before it: below the minimum.
    norms = _steady(5) + [100.0]
    assert _norm_run(norms).stats()["spike_count"] == 0
    norms = _steady(10) + [100.0]
    assert _norm_run(norms).stats()["spike_count"] == 1


def test_spike_window_matters():
    # 20 norms around 10, 20 around 100, then 150: with a window of 10 the
    # 150 stands out from the recent ~100s; with a window of 100 the window
    # is bimodal and its std hides it.
    norms = _steady(20, 10.0) + _steady(20, 100.0) + [150.0]
    small = ref_spike_count(norms, 2.0, 10)
    large = ref_spike_count(norms, 2.0, 100)
    assert small != large
    assert _norm_run(norms, spike_window=10).stats()["spike_count"] == small
    assert _norm_run(norms, spike_window=100).stats()["spike_count"] == large


def test_spike_count_matches_reference_on_noisy_sequence():
    g = torch.Generator().manual_seed(7)
    norms = (10 + torch.rand(200, generator=g, dtype=torch.float64) * 3).tolist()
    for i in (30, 77, 78, 150):
        norms[i] *= 4
    for window, thr in ((100, 2.0), (20, 2.0), (50, 3.0)):
        expect = ref_spike_count(norms, thr, window)
        assert expect >= 3
        got = _norm_run(norms, spike_window=window, spike_threshold=thr).stats()["spike_count"]
        assert got == expect


def test_spike_norm_taken_before_clipping():
    # Clipping is on and clips the spike, yet the spike is still detected.
    norms = _steady(30) + [1000.0]
    opt = _norm_run(norms, enable_clip=True, clip_delay=5)
    s = opt.stats()
    assert s["clip_count"] > 0
    assert s["spike_count"] == 1


# --------------------------------------------------------------------------
# Checkpointing
# --------------------------------------------------------------------------


def _ckpt_kwargs():
    return dict(theta=5.0, clip_delay=2, reset_interval=5, warmup_steps=3,
                spike_window=8, spike_threshold=1.5)


def _ckpt_grads(n):
    seq = grad_stream(n, seed=5)
    for i in (3, 9, 13, 16):
        if i < n:
            seq[i] = [g * 30 for g in seq[i]]
    return seq


def _groups(params):
    return [{"params": [params[0]], "weight_decay": 0.1},
            {"params": [params[1]], "weight_decay": 0.0}]


@pytest.mark.parametrize("split", [4, 5, 7, 10])
def test_state_dict_round_trip_bit_exact(split):
    total = 18
    seq = _ckpt_grads(total)

    straight_params = make_params()
    straight = AdamWSPAM(_groups(straight_params), lr=LR, betas=BETAS, **_ckpt_kwargs())
    run_opt(straight, straight_params, seq)

    first_params = make_params()
    first = AdamWSPAM(_groups(first_params), lr=LR, betas=BETAS, **_ckpt_kwargs())
    run_opt(first, first_params, seq[:split])
    buf = io.BytesIO()
    torch.save({"params": [p.detach() for p in first_params], "opt": first.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    assert "spam" in ckpt["opt"]

    resumed_params = [p.clone().requires_grad_() for p in ckpt["params"]]
    resumed = AdamWSPAM(_groups(resumed_params), lr=LR, betas=BETAS, **_ckpt_kwargs())
    resumed.load_state_dict(ckpt["opt"])
    assert resumed.stats() == first.stats()
    run_opt(resumed, resumed_params, seq[split:])

    for a, b in zip(straight_params, resumed_params):
        assert torch.equal(a, b)
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(straight.state[a][key], resumed.state[b][key])
        assert straight.state[a]["step"] == resumed.state[b]["step"] == total
    assert resumed.stats() == straight.stats()
    s = straight.stats()
    assert s["reset_count"] == 3 and s["clip_count"] > 0 and s["spike_count"] > 0
    for key in ("step", "since_reset", "window_len", "window_pos"):
        assert resumed.spam_state[key] == straight.spam_state[key]
    assert torch.equal(resumed.spam_state["norm_window"], straight.spam_state["norm_window"])


def test_load_without_spam_state_differs():
    """The global counters really come from the checkpoint: dropping them
    (a fresh global state) changes the continuation."""
    seq = _ckpt_grads(12)
    first_params = make_params()
    first = AdamWSPAM(_groups(first_params), lr=LR, betas=BETAS, **_ckpt_kwargs())
    run_opt(first, first_params, seq[:7])
    sd = copy.deepcopy(first.state_dict())
    sd.pop("spam")
    params = [p.detach().clone().requires_grad_() for p in first_params]
    opt = AdamWSPAM(_groups(params), lr=LR, betas=BETAS, **_ckpt_kwargs())
    opt.load_state_dict(sd)
    assert opt.stats() == {"clip_count": 0, "spike_count": 0, "reset_count": 0}
    run_opt(opt, params, seq[7:])
    run_opt(first, first_params, seq[7:])
    assert not torch.equal(params[0], first_params[0])


def test_state_dict_is_a_snapshot():
    params = make_params()
    opt = AdamWSPAM(_groups(params), lr=LR, betas=BETAS, **_ckpt_kwargs())
    seq = _ckpt_grads(10)
    run_opt(opt, params, seq[:6])
    sd = opt.state_dict()
    saved = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in sd["spam"].items()}
    run_opt(opt, params, seq[6:])
    for k, v in saved.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(sd["spam"][k], v)
        else:
            assert sd["spam"][k] == v
    assert sd["spam"]["step"] == 6 and opt.spam_state["step"] == 10


# --------------------------------------------------------------------------
# Misc
# --------------------------------------------------------------------------


def test_float32_model_runs_and_counts_are_ints():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 2)
    opt = AdamWSPAM(model.parameters(), lr=1e-3, clip_delay=2, reset_interval=4,
                    warmup_steps=2)
    for _ in range(12):
        opt.zero_grad()
        model(torch.randn(8, 5)).pow(2).mean().backward()
        opt.step()
    s = opt.stats()
    assert all(type(v) is int for v in s.values())
    assert s["reset_count"] == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_loads_torch_adamw_state_dict():
    """An AdamW checkpoint continues as plain AdamW (features off)."""
    pa, pb = make_params(), make_params()
    ref = torch.optim.AdamW(_groups(pa), lr=LR, betas=BETAS, foreach=False)
    seq = grad_stream(8)
    run_opt(ref, pa, seq[:4])
    ours = AdamWSPAM(_groups(pb), lr=LR, betas=BETAS, enable_clip=False, periodic_reset=False)
    ours.load_state_dict(copy.deepcopy(ref.state_dict()))
    with torch.no_grad():
        for a, b in zip(pa, pb):
            b.copy_(a)
    run_opt(ref, pa, seq[4:])
    run_opt(ours, pb, seq[4:])
    for a, b in zip(pa, pb):
        assert torch.equal(a, b)
        assert ours.state[b]["step"] == 8


def test_invalid_arguments():
    p = [torch.zeros(2, requires_grad=True)]
    for kw in (dict(reset_interval=0), dict(theta=0.0), dict(clip_delay=-1),
               dict(warmup_steps=-1), dict(spike_window=1), dict(lr=-1.0)):
        with pytest.raises(ValueError):
            AdamWSPAM(p, **kw)
