"""Holds ``sitecustomize.py`` (see :mod:`openrlhf_das.integrations.openrlhf.gpu_compat`). This
``__init__`` only makes setuptools ship the folder; nothing imports the package."""
