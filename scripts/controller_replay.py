"""Replay measured step rewards through the adaptive guidance rule (DESIGN.md section 7) with
other knob settings, and through its sparse-reward variant (`adaptive_sparse`): how ℓ would
move, open loop (the rewards do not respond to the new ℓ).

    python scripts/controller_replay.py docs/demo/hard/demo_results.json > docs/demo/controller_replay_hard.md

Open loop is a fair picture only where guidance barely moves the reward (the hard regime:
ℓ = 36 lifts the built-in model's sampled 4-digit accuracy from 0.02 to 0.03). Every run of
every method in the file is replayed (their accuracy curves are the reward sequences the rule
would see at that noise level); reported per setting: final ℓ, the share of steps ℓ sits at
either bound, how many updates changed ℓ, and the largest one-step factor.
"""
from __future__ import annotations

import itertools
import json
import sys

import numpy as np

from g2rpo_fast.guidance import AdaptiveGuidance, SparseAdaptiveGuidance

# (label, window, update_every, min_length, adaptive_sparse's factor clamp or None for the paper's
# rule); ℓ0 and max_length: the run's config
SETTINGS = (("paper's rule as run: window 2, every step, min 1", 2, 1, 1, None),
            ("paper's rule, window 8, every step, min 1", 8, 1, 1, None),
            ("paper's rule, authors' cycle: window 2, update_every 3, min 1", 2, 3, 1, None),
            ("paper's rule, window 2, update_every 3, min 9", 2, 3, 9, None),
            ("paper's rule, window 8, update_every 4, min 9", 8, 4, 9, None),
            ("adaptive_sparse as run: window 2, every step, min 1, c = 2", 2, 1, 1, 2.0),
            ("adaptive_sparse, window 2, every step, min 1, c = 1.5", 2, 1, 1, 1.5))


def replay(rewards, initial, window, update_every, lo, hi, factor=None):
    ctrl = AdaptiveGuidance(initial, hi, lo, window, update_every) if factor is None else \
        SparseAdaptiveGuidance(initial, hi, lo, window, update_every, factor)
    lengths = [ctrl.length]
    for r in rewards:
        lengths.append(ctrl.update(r))
    return lengths


def main(path: str) -> int:
    data = json.load(open(path, encoding="utf-8"))
    initial, hi = data["config"]["guidance_initial_length"], data["config"]["guidance_max_length"]
    # the reward the controller sees: every generated sample's (sampled_accuracy; DAPO trains on fewer)
    curve = lambda c: c.get("sampled_accuracy") or c.get("accuracy") or c["reward"]
    sequences = [[m or 0.0 for m in curve(run["curves"])] for runs in data["runs"].values() for run in runs]
    mean_reward = float(np.mean([r for s in sequences for r in s]))
    zero = float(np.mean([r == 0 for s in sequences for r in s]))
    print(f"Replay of {len(sequences)} measured reward sequences ({path}; {len(sequences[0])} steps each, mean "
          f"step reward {mean_reward:.3f}, {zero:.0%} of steps with reward 0), ℓ0 = {initial}, max_length {hi}, "
          "open loop.\n")
    print("| setting | final ℓ (mean, min-max) | steps at a bound | updates that changed ℓ | largest factor |")
    print("| --- | --- | --- | --- | --- |")
    for label, window, every, lo, clamp in SETTINGS:
        finals, at_bound, changes, factor = [], [], [], 1.0
        for seq in sequences:
            lengths = replay(seq, min(max(initial, lo), hi), window, every, lo, hi, clamp)
            finals.append(lengths[-1])
            at_bound.append(np.mean([x in (lo, hi) for x in lengths[1:]]))
            changes.append(sum(a != b for a, b in itertools.pairwise(lengths)))
            factor = max([factor] + [max(a, b) / min(a, b) for a, b in itertools.pairwise(lengths) if min(a, b) > 0])
        print(f"| {label} | {np.mean(finals):.1f} ({min(finals)}-{max(finals)}) | {np.mean(at_bound):.0%} | "
              f"{np.mean(changes):.1f} | {factor:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
