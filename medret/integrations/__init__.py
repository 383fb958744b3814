"""Integrations with RL trainers: Search-R1 (patcher, runtime, protocol), veRL (search tool), rollout smoke.

Modules are imported on demand: ``protocol`` has no dependencies; ``verl_tool`` needs ``verl`` only to subclass
its ``BaseTool`` (a stand-in base is used without it).
"""
from __future__ import annotations

__all__ = ["protocol", "searchr1_patch", "searchr1_runtime", "verl_tool", "rollout", "cli"]
