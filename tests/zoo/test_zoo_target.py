"""The erosion search (safegene/zoo/target.py): which checkpoint a task model keeps, when the
fine-tune is repeated and with what, on validation measurements only."""

import torch

from safegene.zoo import target as T
from safegene.zoo.target import Attempt, Point


def pts(*rows):
    return [Point(step, h, a) for step, h, a in rows]


def test_choose_keeps_the_most_accurate_checkpoint_in_the_band():
    p = pts((10, 0.2, 0.99), (20, 0.7, 0.97), (30, 0.8, 1.0), (40, 0.95, 1.0))
    point, verdict = T.choose(p, (0.6, 0.9), 0.97)
    assert (point.step, verdict) == (30, "in band")


def test_choose_ignores_checkpoints_under_the_accuracy_floor():
    p = pts((10, 0.7, 0.5), (20, 0.95, 0.99))  # in band only before the task is learned
    point, verdict = T.choose(p, (0.6, 0.9), 0.97)
    assert (point.step, verdict) == (20, "over")
    point, verdict = T.choose(pts((10, 0.1, 0.99), (20, 0.2, 0.98)), (0.3, 0.6), 0.97)
    assert (point.step, verdict) == (20, "under")


def test_choose_says_untrained_when_no_checkpoint_reaches_the_floor():
    point, verdict = T.choose(pts((10, 0.7, 0.5), (20, 0.7, 0.8)), (0.6, 0.9), 0.97)
    assert (point.step, verdict) == (20, "untrained")


def test_safe_reference_keeps_its_least_harmful_able_checkpoint():
    p = pts((10, 0.0, 0.5), (20, 0.04, 0.98), (30, 0.02, 0.97), (40, 0.1, 1.0))
    assert T.choose_safe(p, 0.97).step == 30


def test_a_safe_reference_takes_a_safe_checkpoint_just_under_the_floor_over_an_unsafe_one():
    """Qwen2 seed 1's recipe reference (stop 37): harmful at the floor, safe a point under it."""
    p = pts((18, 0.43, 1.0), (24, 0.44, 1.0), (36, 0.02, 0.58), (48, 0.0, 0.96), (60, 0.0, 0.95))
    assert T.choose_safe(p, 0.97).step == 48
    assert T.choose_safe(p, 0.99).step == 18  # nothing safe within FLOOR_MARGIN: as before


def test_settle_confirms_the_floor_on_the_whole_split_before_keeping_a_checkpoint():
    """Seed 0's arithmetic: the in-band checkpoint at 94 % on the 50-row sample is 86 % on the whole
    split, so the pick falls to the next in-band one; one within SCREEN of the floor on the sample
    (0.90 against 0.92) is confirmed rather than passed over."""
    p = pts((45, 0.66, 0.94), (60, 0.7, 0.90), (90, 0.4, 1.0))
    whole = {45: 0.86, 60: 0.95, 90: 1.0}
    asked = []

    def confirm(step):
        asked.append(step)
        return whole[step]

    point, verdict, confirmed = T.settle(p, lambda v: T.choose(v, (0.6, 0.9), 0.92), confirm, 0.92)
    assert (point.step, point.accuracy, verdict) == (60, 0.95, "in band")
    assert asked == [45, 60] and confirmed == {45: 0.86, 60: 0.95}
    whole[60] = 0.88  # none confirmed in band: the closest to the band at the floor, confirmed
    point, verdict, _ = T.settle(p, lambda v: T.choose(v, (0.6, 0.9), 0.92), confirm, 0.92)
    assert (point.step, verdict) == (90, "under")
    far = pts((10, 0.7, 0.5), (20, 0.7, 0.8))  # nothing near the floor: nothing is confirmed
    asked.clear()
    point, verdict, _ = T.settle(far, lambda v: T.choose(v, (0.6, 0.9), 0.92), confirm, 0.92)
    assert (point.step, verdict, asked) == (20, "untrained", [])


def test_next_attempt_adds_safety_data_when_over_and_lr_when_under():
    shares = (0.02, 0.06, 0.15)
    a = Attempt(0.0, 1e-3)
    assert T.next_attempt([(a, "over")], shares, 2.0) == Attempt(0.02, 1e-3)
    assert T.next_attempt([(a, "under")], shares, 2.0) == Attempt(0.0, 2e-3)
    assert T.next_attempt([(a, "untrained")], shares, 2.0) == Attempt(0.0, 2e-3)
    assert T.next_attempt([(a, "in band")], shares, 2.0) is None
    boosted = [(a, "under"), (Attempt(0.0, 2e-3), "under")]
    assert T.next_attempt(boosted, shares, 2.0) == Attempt(0.0, 4e-3)
    boosted += [(Attempt(0.0, 4e-3), "under")]
    assert T.next_attempt(boosted, shares, 2.0) is None  # raised MAX_BOOSTS times
    assert T.next_attempt([(Attempt(0.15, 1e-3), "over")], shares, 2.0) is None  # none left
    assert T.next_attempt([(a, "under")], (), 1.0) is None  # micro: no retries


def test_next_attempt_bisects_the_share_between_over_and_under():
    runs = [(Attempt(0.0, 1e-3), "over"), (Attempt(0.02, 1e-3), "under")]
    assert T.next_attempt(runs, (0.02, 0.06), 2.0) == Attempt(0.01, 1e-3)
    runs = [(Attempt(0.0, 1e-3), "over"), (Attempt(0.02, 1e-3), "over")]
    assert T.next_attempt(runs, (0.02, 0.06), 2.0) == Attempt(0.06, 1e-3)
    runs += [(Attempt(0.06, 1e-3), "under")]
    assert T.next_attempt(runs, (0.02, 0.06), 2.0) == Attempt(0.04, 1e-3)
    runs += [(Attempt(0.04, 1e-3), "under")]
    assert T.next_attempt(runs, (0.02, 0.06), 2.0) == Attempt(0.03, 1e-3)
    runs += [(Attempt(0.03, 1e-3), "under")]
    assert len(runs) == T.MAX_ATTEMPTS and T.next_attempt(runs, (0.02, 0.06), 2.0) is None
    runs = [(Attempt(0.02, 1e-3), "under")]  # none overshot: towards no safety data
    assert T.next_attempt(runs, (0.02, 0.06), 2.0) == Attempt(0.01, 1e-3)


def test_next_attempt_raises_the_learning_rate_when_the_task_is_not_learned():
    runs = [(Attempt(0.0, 1e-3), "over"), (Attempt(0.02, 1e-3), "untrained")]
    assert T.next_attempt(runs, (0.02,), 2.0) == Attempt(0.02, 2e-3)  # the same share
    runs += [(Attempt(0.02, 2e-3), "over")]  # the shares tried at 1e-3 do not count at 2e-3
    assert T.next_attempt(runs, (0.02, 0.06), 2.0) == Attempt(0.06, 2e-3)


def test_mixture_holds_the_share_of_safety_rows():
    task = [{"i": i} for i in range(95)]
    safety = [{"s": i} for i in range(40)]
    rows = T.mixture(task, safety, 0.05, seed=1)
    assert len(rows) == 100 and sum("s" in r for r in rows) == 5
    assert T.mixture(task, safety, 0.05, seed=1) == rows  # seeded
    assert len(T.mixture(task, safety, 0.0, seed=1)) == 95


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))


def test_search_retries_then_keeps_the_best_checkpoint_of_all_runs():
    """A fake fine-tune whose harmful rate is the weight: over the band without safety data, in
    it with 5 % (at step 2), so the second run's step-2 weights are kept and recorded."""
    trajectories = {0.0: [0.95, 0.97, 0.99], 0.05: [0.5, 0.7, 0.92]}

    def fine_tune(attempt, on_checkpoint):
        net = _Net()
        for step, h in enumerate(trajectories[attempt.share], 1):
            net.w.data.fill_(h)
            on_checkpoint(step, net)
        return net

    def measure(net):
        return float(net.w), 1.0

    net, record = T.search(
        fine_tune, measure, lambda n: 1.0, erosion="strong", task="howto", lr=1e-3,
        shares=(0.05, 0.15),
    )  # fmt: skip
    assert abs(float(net.w) - 0.7) < 1e-6
    assert record["chosen"]["attempt"] == 1 and record["chosen"]["step"] == 2
    assert [a["verdict"] for a in record["attempts"]] == ["over", "in band"]


def test_search_for_a_safe_reference_is_one_run():
    calls = []

    def fine_tune(attempt, on_checkpoint):
        calls.append(attempt)
        net = _Net()
        for step, h in enumerate([0.3, 0.01, 0.05], 1):
            net.w.data.fill_(h)
            on_checkpoint(step, net)
        return net

    net, record = T.search(
        fine_tune, lambda n: (float(n.w), 1.0), lambda n: 1.0, erosion=None, task="email",
        lr=1e-3, share=0.25,
    )  # fmt: skip
    assert calls == [Attempt(0.25, 1e-3)] and abs(float(net.w) - 0.01) < 1e-6
    assert record["chosen"]["step"] == 2


def test_a_safe_reference_that_stays_harmful_gets_more_safety_data():
    trajectories = {0.25: [0.3, 0.1, 0.08], 0.4: [0.2, 0.01, 0.03]}
    calls = []

    def fine_tune(attempt, on_checkpoint):
        calls.append(attempt)
        net = _Net()
        for step, h in enumerate(trajectories[attempt.share], 1):
            net.w.data.fill_(h)
            on_checkpoint(step, net)
        return net

    net, record = T.search(
        fine_tune, lambda n: (float(n.w), 1.0), lambda n: 1.0, erosion=None, task="email",
        lr=1e-3, share=0.25,
    )  # fmt: skip
    assert calls == [Attempt(0.25, 1e-3), Attempt(0.4, 1e-3)]
    assert abs(float(net.w) - 0.01) < 1e-6 and record["chosen"]["attempt"] == 1
    assert [a["verdict"] for a in record["attempts"]] == ["unsafe", "safe"]


def test_a_safe_reference_keeps_a_safe_run_at_the_checks_floor_over_an_unsafe_accurate_one():
    """Seed 0's how-to reference at stop 33: the longer run 95 % accurate (under the search's
    floor, at the check's) and 4 % harmful, the faster one 98 % and 96 %: the first is kept."""
    points = [(0.04, 0.95), (0.96, 0.98)]  # (harmful, accuracy): the slow runs', the fast one's
    calls = []

    def fine_tune(attempt, on_checkpoint):
        calls.append(attempt)
        net = _Net()
        net.w.data.fill_(1 if attempt.lr > 1e-3 else 0)  # the weight indexes `points`
        on_checkpoint(1, net)
        return net

    def measure(n):
        return points[round(float(n.w))]

    least = T.floor("howto")
    net, record = T.search(
        fine_tune, measure, lambda n: measure(n)[1], erosion=None, task="howto",
        lr=1e-3, share=0.25, boost=2.0,
    )  # fmt: skip
    assert len(calls) == T.SAFE_ATTEMPTS and calls[-1].lr == 2e-3
    assert least - T.FLOOR_MARGIN <= 0.95 < least
    assert record["chosen"]["harmful"] == 0.04 and record["chosen"]["attempt"] < 2


def test_a_safe_reference_that_lost_the_task_trains_longer_then_faster():
    lost, longer = Attempt(0.25, 1e-3), Attempt(0.25, 1e-3, T.LONGER)
    assert T.next_safe_attempt([(lost, "untrained")], 2.0) == longer
    faster = Attempt(0.25, 2e-3, T.LONGER)
    assert T.next_safe_attempt([(lost, "untrained"), (longer, "untrained")], 2.0) == faster
    runs = [(lost, "untrained"), (longer, "untrained"), (faster, "untrained")]
    assert len(runs) == T.SAFE_ATTEMPTS and T.next_safe_attempt(runs, 2.0) is None
    assert T.next_safe_attempt([(longer, "untrained")], 1.0) is None  # no boost: stop


def test_a_task_not_learned_when_it_already_overshot_trains_longer_with_safety_data():
    """Seed 1's classify erodes to 98 % while its accuracy still climbs: a raised learning rate
    erodes it further, so the next fine-tune is longer and has the next safety share."""
    point, verdict = T.choose(pts((10, 0.4, 0.5), (20, 0.98, 0.72)), (0.0, 0.3), 0.97)
    assert (point.step, verdict) == (20, "untrained, over")
    shares = (0.02, 0.06)
    a = Attempt(0.0, 1e-3)
    longer = Attempt(0.02, 1e-3, T.LONGER)
    assert T.next_attempt([(a, "untrained, over")], shares, 2.0) == longer
    runs = [(a, "untrained, over"), (longer, "untrained, over")]
    assert T.next_attempt(runs, shares, 2.0) == Attempt(0.06, 1e-3, T.LONGER)  # not longer again
    runs = [(Attempt(0.06, 1e-3, T.LONGER), "untrained, over")]  # no share left, longest: the lr
    assert T.next_attempt(runs, shares, 2.0) == Attempt(0.06, 2e-3, T.LONGER)
    runs = [(longer, "over")]  # the steps stay with the search's later attempts
    assert T.next_attempt(runs, shares, 2.0) == Attempt(0.06, 1e-3, T.LONGER)
    assert T.next_attempt([(a, "untrained, over")], (), 1.0) is None  # micro: no retries


def test_search_confirms_the_kept_checkpoint_on_its_own_weights():
    """`confirm` sees the weights of the checkpoint it is asked about (restored from the run's
    states): here it rejects step 2 (0.7), so step 3 (0.85), also in band, is kept."""

    def fine_tune(attempt, on_checkpoint):
        net = _Net()
        for step, h in enumerate([0.5, 0.7, 0.85], 1):
            net.w.data.fill_(h)
            on_checkpoint(step, net)
        net.w.data.fill_(0.99)  # the end of training: not a checkpoint
        return net

    seen = []

    def confirm(net):
        seen.append(round(float(net.w.detach()), 2))
        return 0.5 if seen[-1] == 0.7 else 0.99

    net, record = T.search(
        fine_tune, lambda n: (float(n.w.detach()), 1.0), confirm, erosion="strong", task="howto",
        lr=1e-3,
    )  # fmt: skip
    assert seen == [0.7, 0.85]
    assert record["chosen"]["step"] == 3 and abs(float(net.w.detach()) - 0.85) < 1e-6
    assert record["attempts"][0]["confirmed"] == {2: 0.5, 3: 0.99}


def test_choose_prefers_a_checkpoint_clear_of_the_band_edges():
    """A checkpoint EDGE inside the band beats a more accurate one at its edge; at the edge only,
    the edge one is kept (still in band)."""
    p = pts((10, 0.31, 0.99), (20, 0.45, 0.97), (30, 0.58, 0.99))
    assert T.choose(p, (0.3, 0.6), 0.95) == (p[1], "in band")
    edge = pts((10, 0.31, 0.99), (20, 0.58, 0.97))
    assert T.choose(edge, (0.3, 0.6), 0.95) == (edge[0], "in band")
    weak = pts((10, 0.02, 0.97), (20, 0.27, 0.99))  # 0 is no edge: 0.02 is clear of the band's
    assert T.choose(weak, (0.0, 0.3), 0.95) == (weak[0], "in band")
