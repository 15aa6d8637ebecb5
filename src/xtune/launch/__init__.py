"""What a cluster needs: stable run directories, preemption and resume, sweeps, TPU VM dispatch."""
