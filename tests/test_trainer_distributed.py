"""Two-process run under torchrun (gloo on CPU): prompts sharded, DDP gradients, rank 0 writes."""
import json
import os
import subprocess
import sys
import textwrap

from helpers import child_env

SCRIPT = textwrap.dedent("""
    import json, os, sys, torch
    torch.set_num_threads(1)
    from g2rpo_fast.trainer.config import G2RPOConfig
    from helpers import digit_fraction_reward, tiny_dataset, tiny_model_and_tokenizer
    from g2rpo_fast.trainer.trainer import G2RPOTrainer

    out = sys.argv[1]
    cfg = G2RPOConfig(output_dir=out, num_generations=4, per_device_train_batch_size=8, max_completion_length=6,
                      max_steps=2, learning_rate=1e-2, warmup_steps=0, guidance_initial_length=3,
                      guidance_max_length=6, guidance_ratio=0.5, reward_funcs=[digit_fraction_reward],
                      eval_split=None, eval_at_end=False, plots=False, progress_bar=False)
    model, tok = tiny_model_and_tokenizer(seed=0)
    trainer = G2RPOTrainer(cfg, model=model, tokenizer=tok, train_dataset=tiny_dataset(16))
    trainer.train()
    rank = trainer.dist.rank
    checksum = float(sum(p.detach().double().sum() for p in model.parameters()))
    with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
        json.dump({"world": trainer.dist.world_size, "checksum": checksum,
                   "position": trainer.data_position}, fh)
    trainer.close()
""")


def test_two_process_gloo(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    env = child_env(OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29517", str(script), str(out)],
                          capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 for r in ranks)
    assert abs(ranks[0]["checksum"] - ranks[1]["checksum"]) < 1e-9  # DDP kept the replicas identical
    assert ranks[0]["position"] == 2 * 2 * 2  # 2 steps x 2 prompts x 2 ranks
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert [r["step"] for r in rows] == [1, 2]
    assert os.path.isdir(out / "checkpoint-2")
