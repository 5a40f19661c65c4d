"""Launching `l3m train` at scale: `l3m launch` (a torchrun command) and `l3m submit --slurm` (a SLURM job).

torchrun.py builds the torchrun command from flags and the environment, mesh.py checks a program's mesh
fits the processes asked for, slurm.py writes and submits the job with submitit, cli.py is the command line.
"""
