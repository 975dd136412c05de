"""The engine is the pure core: importing it must pull in no adapter, file-format or service code."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ("edgeloop.adapters", "edgeloop.models.modelfile", "edgeloop.service")


def test_engine_imports_no_adapters() -> None:
    # A fresh interpreter: this test process has long imported everything.
    code = (
        "import json, sys\n"
        "import edgeloop.engine.engine, edgeloop.engine.state\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('edgeloop'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout)
    assert "edgeloop.engine.engine" in loaded
    offenders = [m for m in loaded if m.startswith(FORBIDDEN)]
    assert offenders == []


def test_loaded_model_is_a_served_model() -> None:
    import numpy as np

    from edgeloop.engine.rows import ServedModel
    from edgeloop.models.forecasters import Persistence
    from edgeloop.models.modelfile import LoadedModel

    model: ServedModel = LoadedModel("voc_ppb:v1", Persistence(3), {"scores": {"val_rmse": 2.0}})
    assert model.val_rmse == 2.0
    assert model.forecaster.predict(np.ones((1, 3))).tolist() == [1.0]
