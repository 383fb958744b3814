"""`medret doctor`: check a set-up end to end before a long job starts.

Every check is data: a :class:`Check` with a status (``ok`` / ``warn`` / ``fail``), a one-line title, a detail and
the fix. :func:`run_checks` runs them in order for a :class:`DoctorOptions`; :func:`exit_status` is 1 when anything
failed. The checks call the components they check, rather than re-deriving their rules, so the doctor and the real
run agree:

* :mod:`~medret.doctor.environment`: Python, packages, PyTorch / CUDA, GPUs and the device resolution
  (:func:`medret.device.resolve_device`);
* :mod:`~medret.doctor.data`: chunk files, the document store (:class:`medret.corpus.store.DocStore`), each index
  where :mod:`medret.index.locate` finds it and as its loader opens it, and the memory they take;
* :mod:`~medret.doctor.integrity`: content hashes against the manifests, leftovers of killed builds;
* :mod:`~medret.doctor.runtime`: the encoders (:class:`medret.encoders.hf.Encoder`), a test query through
  :class:`medret.api.Retriever`, the server's ``/health`` through the HTTP transport;
* :mod:`~medret.doctor.jobs`: the Search-R1 patcher's ``check`` and the SLURM script checker.
"""
from __future__ import annotations

from medret.doctor.checks import FAIL, OK, WARN, Check, Need, gb
from medret.doctor.data import check_memory
from medret.doctor.run import (
           DoctorOptions,
           exit_status,
           format_checks,
           load_config_file,
           run_checks,
)
from medret.doctor.runtime import check_server

__all__ = ["FAIL", "OK", "WARN", "Check", "DoctorOptions", "Need", "check_memory", "check_server", "exit_status",
           "format_checks", "gb", "load_config_file", "run_checks"]
