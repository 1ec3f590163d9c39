"""Alignment: preference optimisation (DPO, KTO, ORPO), reward models, online RL against rewards (GRPO, RLOO) and
the reward functions data engineers register (docs/alignment.md)."""
