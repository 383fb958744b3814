"""Writing medret's files safely: the helpers every store and index build uses.

* :mod:`~medret.storage.atomic`: write to a temporary name, rename when complete;
* :mod:`~medret.storage.locks`: one build per artifact at a time (others wait, then reuse it);
* :mod:`~medret.storage.leftovers`: what killed builds left behind, and removing it;
* :mod:`~medret.storage.checksums`: sha256 of files as they are written and when checked;
* :mod:`~medret.storage.disk`: full disks and read-only folders as clear errors, preallocation.
"""
