"""Phases 1-2 of a step: generate, score and build the loss inputs (`RolloutBatch`es).

`generate_rollouts` takes the next prompts of every micro-batch of the step (this rank's share;
a seeded order per epoch, or the dataset order with `curriculum`) and rolls them out in one
engine call (`_roll_out_round`, through `rollout/guided.py`: the first `round(guidance_ratio·G)`
samples of each group continue from prompt + the first ℓ solution tokens), scores each
micro-batch (`rewards/scoring.py`) and builds it (`batch.py`). With `dynamic_sampling`, DAPO's
filter (`rollout/dynamic_sampling.py`) keeps the groups whose rewards differ and further rounds
of fresh prompts follow until every micro-batch is full of them or the cap is reached, every rank
running as many rounds. A mixin of `G2RPOTrainer`: these are its methods, kept apart from the loop.
"""
from __future__ import annotations

import numpy as np

from g2rpo_fast.data.sources import take_indices
from g2rpo_fast.distributed.parallel import agree_count, equal_forward_count, gathered_weights
from g2rpo_fast.distributed.process_group import all_ranks
from g2rpo_fast.rewards.scoring import reward_inputs
from g2rpo_fast.rollout.dynamic_sampling import sample_with_signal

from .batch import RolloutBatch, build_rollout_batch, kept_groups


class TrainerGeneration:
    def generate_rollouts(self, guidance_length: int) -> list[RolloutBatch]:
        """The generation batch: the next prompts of every micro-batch (this rank's share) rolled out
        in one engine call (its guided groups), then scored and built as one `RolloutBatch` per
        micro-batch. With `dynamic_sampling`, more such rounds of fresh prompts until every
        micro-batch holds only groups with signal (`rollout/dynamic_sampling.py`)."""
        cfg = self.config
        rounds, sampling = sample_with_signal(
            lambda r: self._roll_out_round(r, guidance_length), group_size=cfg.num_generations,
            target_groups=cfg.prompts_per_micro_batch, parts=cfg.gradient_accumulation_steps,
            max_rounds=cfg.dynamic_sampling_max_rounds if cfg.dynamic_sampling else 1,
            agree=lambda full: all_ranks(full, self.dist, self._comm_device()))
        align = agree = None
        if self.dist.world_size > 1:
            def agree(count):
                return agree_count(count, self.dist, self._comm_device())
            if self.sharded:
                def align(packed):
                    equal_forward_count(packed, self.dist, self._comm_device())
        batches = []
        for micro_rounds, stats in zip(rounds, sampling):
            samples, scores = kept_groups(micro_rounds, cfg.num_generations) if cfg.dynamic_sampling \
                else micro_rounds[0][:2]
            batches.append(build_rollout_batch(samples, scores, cfg, self.runtime, self.policy, self.ref_policy,
                                               prefix_shared=self.prefix_shared, align_forwards=align,
                                               max_piece_tokens=self.piece_tokens, agree_pieces=agree))
            batches[-1].sampling = stats
        return batches

    def _roll_out_round(self, round_index: int, guidance_length: int) -> list[tuple]:
        """One generation round: the next prompts of every micro-batch in one engine call; each
        micro-batch's `(samples, scores)`."""
        cfg = self.config
        n_prompts, world, rank, group = cfg.prompts_per_micro_batch, self.dist.world_size, self.dist.rank, \
            cfg.num_generations
        rows_per_micro, seeds = [], []
        for micro in range(cfg.gradient_accumulation_steps):
            global_idx = take_indices(len(self.train_dataset), self.data_position, n_prompts * world, cfg.seed,
                                      cfg.curriculum)
            self.data_position += n_prompts * world
            rows_per_micro.append([self.train_dataset[int(i)]
                                   for i in global_idx[rank * n_prompts:(rank + 1) * n_prompts]])
            # Seeds independent of the global RNG state and of the batch layout: resume reproduces them.
            key = [cfg.seed, self.step, micro, rank] + ([round_index] if round_index else [])
            seeds.extend(np.random.SeedSequence(key).generate_state(n_prompts * group, dtype=np.uint64) % (2**62))
        rows = [row for micro_rows in rows_per_micro for row in micro_rows]
        with gathered_weights(self.policy):  # FSDP: whole weights for the engine, freed after
            samples = self.rollouts.generate(rows, group_size=group, n_guided=cfg.n_guided,
                                             guidance_length=guidance_length,
                                             max_new_tokens=cfg.max_completion_length, temperature=cfg.temperature,
                                             top_p=cfg.top_p, top_k=cfg.top_k, seeds=[int(x) for x in seeds],
                                             entropy=True)
        per_micro = n_prompts * group
        parts = [samples[m * per_micro:(m + 1) * per_micro] for m in range(cfg.gradient_accumulation_steps)]
        scored = []
        for part in parts:
            prompts, completions, columns = reward_inputs(rows, part, cfg.prompt_field)
            # TRL passes the trainer's state to reward functions as `trainer_state`
            scored.append((part, self.rewards.score(prompts, completions, {**columns, "trainer_state": self.state})))
        return scored
