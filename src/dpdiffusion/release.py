"""What a release says about the private data, and where owner-side commands find the rest.

A release (``release/model.safetensors`` with the configuration and the privacy report in its header, and
``release/privacy.json``) names the private dataset by kind, never by where its files lie: ``data.path``,
``data.test_path`` and ``data.data_dir`` (and ``pretrain.data.data_dir``, a local folder too) are withheld from
the configuration it carries, and listed under the header's ``withheld``. With a declared public size
(``privacy.public_dataset_size``) ``data.subset`` is withheld as well: a range of a canonical dataset gives N.

The run's own ``RUN_DIR/config.json`` keeps every setting: like everything outside ``release/`` it stays with the
data owner, and owner-side commands on a run folder (``evaluate``, ``audit``) read the private data's settings
from it (``owner_data``); given only a release, they take the paths as flags.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dpdiffusion.run_folder import RunFolder
from dpdiffusion.runconfig import ConfigError, DataConfig

# the public data's locations too: a folder's path can name a cohort, and public data may be a part of the private
# data's own folder tree
WITHHELD = ("data.path", "data.test_path", "data.data_dir", "pretrain.data.path", "pretrain.data.test_path",
            "pretrain.data.data_dir")
WITHHELD_WITH_DECLARED_SIZE = ("data.subset",)


def released_config(config: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A run configuration (``RunConfig.to_dict()``) as a release carries it -- the private data's locations
    (and with a declared public size its range) set to None -- and the keys so withheld that had a value."""
    released = copy.deepcopy(dict(config))
    declared = (released.get("privacy") or {}).get("public_dataset_size") is not None
    withheld = []
    for key in WITHHELD + (WITHHELD_WITH_DECLARED_SIZE if declared else ()):
        *parents, last = key.split(".")
        section: Any = released
        for part in parents:
            section = section.get(part) if isinstance(section, dict) else None
        if isinstance(section, dict) and section.get(last) is not None:
            section[last] = None
            withheld.append(key)
    return released, withheld


def released_start(start: Mapping[str, Any]) -> dict[str, Any]:
    """A start's description as a release carries it: its file named without the owner's folders (which can name
    a cohort); its sha256 identifies it."""
    described = dict(start)
    if described.get("path"):
        described["path"] = Path(str(described["path"])).name
    return described


def owner_data(run_dir: str | Path, released: DataConfig) -> DataConfig:
    """The private data's settings for an owner-side command on ``run_dir``: those of the owner's
    ``RUN_DIR/config.json`` (which keeps what the release withholds) when it is there, else the release's."""
    path = RunFolder(run_dir).config
    if not path.is_file():
        return released
    try:
        data = json.loads(path.read_text()).get("data") or {}
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path}: not a readable run configuration ({error})") from error
    owner = {k: data[k] for k in ("path", "test_path", "data_dir", "subset") if data.get(k) is not None}
    return dataclasses.replace(released, **owner)


def check_located(data: DataConfig, flags: str) -> None:
    """The user's own images (an image folder, a CSV, an npz, a Hugging Face dataset) need their path, which a
    release does not carry: say which flags give it."""
    from dpdiffusion.data.datasets import LOCATED

    if data.name in LOCATED and data.path is None:
        raise ConfigError(f"the release does not carry the private {data.name} data's path (withheld): pass {flags}")
