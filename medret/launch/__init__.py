"""Launching medret with RL training jobs: SLURM job scripts (render + check) for Search-R1 / veRL."""
from __future__ import annotations

from medret.launch.slurm import JobSpec, Plan, check_script, plan_job, render_job

__all__ = ["JobSpec", "Plan", "plan_job", "render_job", "check_script"]
