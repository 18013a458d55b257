"""What both trainers share (`pyramid train-vae`, the latent-action VAE; `pyramid train`, Motus): the checkpoint
convention and the learning-rate schedule. Above the core, below the trainers; it imports no trainer."""
