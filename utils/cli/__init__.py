"""Command-line plumbing: the argument parser and one-line errors, shared flags, YAML configs, generated slurm scripts."""
