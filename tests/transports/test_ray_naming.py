"""Actor names: one per job and per result-changing configuration (no Ray cluster needed)."""
from medret.config import RetrieverConfig
from medret.transports.ray import actor_base_name


def test_job_comes_from_config_then_environment(monkeypatch):
    monkeypatch.delenv("MEDRET_RAY_JOB", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    base = RetrieverConfig(corpus_name="MedCorp", retriever_name="MedCPT", backend="ray")
    assert actor_base_name(base).startswith("medret:MedCorp:MedCPT:4242:")
    monkeypatch.setenv("MEDRET_RAY_JOB", "exp7")
    assert ":exp7:" in actor_base_name(base)
    assert ":tools:" in actor_base_name(base.replace(ray_job="tools"))


def test_settings_that_change_results_change_the_name(monkeypatch):
    monkeypatch.setenv("MEDRET_RAY_JOB", "j")
    a = RetrieverConfig(retriever_name="RRF-2", backend="ray")
    assert actor_base_name(a) != actor_base_name(a.replace(rrf_k=60))
    assert actor_base_name(a) == actor_base_name(a.replace(timeout=5.0))  # transport settings do not
