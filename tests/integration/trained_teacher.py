"""A landmark teacher overfit to one phantom, shared by the learning and the prediction tests (trained once).

The phantom federation it was trained on stays beside it, so a test can predict the same case from its
DICOM series, its NIfTI or the PACS and compare with the generator's truth.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cardiofm.contracts.federation import FederationRecord
from cardiofm.contracts.preprocessing import PreprocessingConfig
from cardiofm.models.config import ModelConfig, default_heads
from cardiofm.phantoms.federation import FederationSettings, generate_federation
from cardiofm.pipeline.prepare import prepare_site
from cardiofm.pipeline.stage_step import case_id_for
from cardiofm.training.config import TrainConfig
from cardiofm.training.trainer import TrainResult, load_training_samples, train

SPACING_MM = 2.0


@dataclass
class Trained:
    dataset: Path
    case_id: str
    result: TrainResult
    config: TrainConfig
    #: the phantom federation's folder (federation.json, ground_truth/, the site's pacs/)
    federation: Path
    record: FederationRecord

    def phantom(self) -> tuple[Path, dict[str, list[float]], str]:
        """The overfit case's DICOM folder, its true landmarks (LPS mm) and its Series Instance UID."""
        site = self.record.sites[0]
        for study in site.studies:
            if case_id_for(site.site_id, study.study_uid) == self.case_id:
                truth = json.loads((self.federation / "ground_truth" / study.case_id / "landmarks.json").read_text())
                folder = self.federation / site.folder / "pacs" / study.patient_id
                return folder, truth["points"], str(study.correct_series_uid)
        raise LookupError(self.case_id)


def train_overfit_teacher(root: Path) -> Trained:
    record = generate_federation(
        root / "fed", FederationSettings(sites=1, cases_per_site=2, seed=4, held_out_sites=0, series_per_study=1)
    )
    prepared = prepare_site(root / "fed" / record.sites[0].folder, root / "ds", test_fraction=0.0)
    assert prepared.prepared == 2
    cfg = TrainConfig(
        tasks=("landmarks",),
        steps=1000,
        batch_size=2,
        patch_size=(32, 32, 32),
        learning_rate=3e-3,
        augment=False,
        foreground_fraction=0.9,
        preprocessing=PreprocessingConfig(spacing_mm=SPACING_MM),
        seed=1,
    )
    samples = load_training_samples([root / "ds"], cfg)
    one = [s for s in samples if s.targets][:1]  # overfit a single phantom
    model_cfg = ModelConfig(name="resunet-teacher", heads=default_heads("landmarks"), filters=(8, 16, 32, 64))
    result = train(one, cfg, model_cfg, root / "teacher.pt")
    return Trained(root / "ds", one[0].case_id, result, cfg, root / "fed", record)
