"""Integrations with other trainers: `g2rpo_fast.integrations.trl` (TRL's GRPOTrainer)."""
