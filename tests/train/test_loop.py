"""train_one_epoch / evaluate (the loop every training epoch runs), on tiny tensors with known answers."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from edgetransfer.train import Evaluation, NonFiniteLoss, evaluate, train_one_epoch, warmup_cosine  # noqa: E402


def _data(n=12, d=5, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.arange(n) % c
    return [(x[i : i + 4], y[i : i + 4]) for i in range(0, n, 4)]


def test_train_one_epoch_matches_a_hand_written_sgd_loop():
    torch.manual_seed(0)
    a = torch.nn.Linear(5, 3)
    b = torch.nn.Linear(5, 3)
    b.load_state_dict(a.state_dict())
    ce = torch.nn.CrossEntropyLoss()
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt_a, warmup_cosine(3, 1))
    stats = train_one_epoch(a, ce, opt_a, _data(), "cpu", scheduler=sched)
    # by hand: the same steps, lr multiplier 1/2 (warm-up), then cosine 1.0, 0.5
    losses, n = [], 0
    for (x, y), mult in zip(_data(), [0.5, 1.0, 0.5]):
        loss = ce(b(x), y)
        b.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in b.parameters():
                p -= 0.1 * mult * p.grad
        losses.append(float(loss.detach()) * len(y))
        n += len(y)
    assert stats.images == 12 and stats.loss == pytest.approx(sum(losses) / n, rel=1e-6)
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, b.state_dict()[k])
    assert sched.last_epoch == 3  # one scheduler step per batch


def test_gradient_clipping_bounds_the_step():
    torch.manual_seed(0)
    m = torch.nn.Linear(5, 3)
    before = [p.detach().clone() for p in m.parameters()]
    big = [(x * 1e3, y) for x, y in _data()[:1]]
    train_one_epoch(m, torch.nn.CrossEntropyLoss(), torch.optim.SGD(m.parameters(), lr=1.0), big, "cpu", clip_grad_norm=0.01)
    step = math.sqrt(sum(float(((p.detach() - q) ** 2).sum()) for p, q in zip(m.parameters(), before)))
    assert step == pytest.approx(0.01, rel=1e-4)  # SGD lr 1: the step is the clipped gradient, L2 norm 0.01


def test_non_finite_loss_stops_before_the_step():
    m = torch.nn.Linear(5, 3)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    batches = _data()
    batches[1] = (batches[1][0] * float("nan"), batches[1][1])
    with pytest.raises(NonFiniteLoss) as e:
        train_one_epoch(m, torch.nn.CrossEntropyLoss(), torch.optim.SGD(m.parameters(), lr=0.0), batches, "cpu")
    assert e.value.step == 1 and math.isnan(e.value.value)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # lr 0: nothing moved, the NaN step never ran


def test_evaluate_top1_and_loss_on_known_logits():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 0.5]])
    y = torch.tensor([0, 1, 1, 0])  # 2 of 4 right

    class Fixed(torch.nn.Module):
        def forward(self, i):
            return logits[i]

    batches = [(torch.arange(0, 2), y[:2]), (torch.arange(2, 4), y[2:])]
    ev = evaluate(Fixed(), torch.nn.CrossEntropyLoss(), batches, "cpu")
    expected = float(torch.nn.functional.cross_entropy(logits, y))
    assert ev == Evaluation(top1=0.5, loss=pytest.approx(expected, rel=1e-6), count=4)
    with pytest.raises(ValueError, match="no validation batches"):
        evaluate(Fixed(), torch.nn.CrossEntropyLoss(), [], "cpu")
