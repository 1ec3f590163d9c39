"""The train stage: objectives (SFT first) run through TRL trainers on top of the init stage's model."""
