"""The privacy report and provenance as dataclasses: the JSON a release carries is their ``to_dict``, readers
parse it back unchanged, and reports written before a field existed still read."""

import json

import pytest

from dpdiffusion.cli import main
from dpdiffusion.privacy.report import DataDescription, DatasetSize, PrivacyReport, Provenance, Spent
from tests.tiny import TINY_RUN, write_config

SINGLE = PrivacyReport(private=True, plan={"noise_multiplier": 1.2, "sample_rate": 0.01, "steps": 10, "delta": 1e-5},
                       planned_epsilon=3.0, spent=Spent(epsilon=2.5, delta=1e-5, steps=8), accountant="prv",
                       method="DPDM", libraries={"torch": "2"}, written="2026-01-01T00:00:00+00:00",
                       data=Provenance(private=DataDescription("mnist", 60000), start={"kind": "random initialisation"},
                                       audit_canaries={"drawn": 4}), dataset_size=DatasetSize(60000, declared=False))
COMPOSED = PrivacyReport(private=True, plan={"delta": 1e-5, "parts": {"teacher": {"steps": 3}, "student": {"steps": 4}}},
                         planned_epsilon=float("inf"), spent=Spent(epsilon=1.0, delta=1e-5, steps={"teacher": 3, "student": 1}),
                         accountant="pld", stages=({"name": "teacher", "reads": "private"},),
                         data=Provenance(private=DataDescription("imagefolder", 10, path="/x", subset="0:10"),
                                         public=DataDescription("digits", 500, resolution=8), start={"kind": "k"}),
                         teacher={"mode": "dp"}, dataset_size=DatasetSize(10, declared=True))


@pytest.mark.parametrize("report", [SINGLE, COMPOSED, SINGLE.not_private("NOT private: a test")])
def test_a_report_reads_back_as_written(report):
    written = json.loads(json.dumps(report.to_dict()))
    again = PrivacyReport.from_dict(written)
    assert again.to_dict() == written
    if report.planned_epsilon != float("inf"):  # JSON writes infinity as "inf"
        assert again == report


def test_parts_name_each_dp_stage():
    assert list(SINGLE.parts) == ["dpsgd"] and list(COMPOSED.parts) == ["teacher", "student"]
    assert SINGLE.not_private("why").warning == "why" and not SINGLE.not_private("why").private


def test_an_older_report_without_method_stages_or_data_still_reads():
    old = {"private": True, "plan": {"steps": 2}, "planned_epsilon": 5.0,
           "spent": {"steps": 2, "epsilon": 4.9, "delta": 1e-4}, "mechanism": "m", "accountant": "prv"}
    report = PrivacyReport.from_dict(old)
    assert report.epsilon == 4.9 and report.method is None and report.stages == () and report.data is None
    assert report.dataset_size is None and "dataset_size" not in report.to_dict()


def test_a_description_without_its_size_reads_and_a_release_never_names_a_path():
    described = DataDescription("imagefolder", 10, subset="0:10", path="/owner/scans")
    assert described.released(size_declared=False).to_dict() == {"dataset": "imagefolder", "size": 10, "split": "train",
                                                                  "subset": "0:10"}
    assert described.released(size_declared=True).to_dict() == {"dataset": "imagefolder", "split": "train"}
    assert DataDescription.from_dict({"dataset": "imagefolder", "split": "train"}).size is None


def test_a_runs_release_is_the_dataclass_json(tmp_path):
    run = tmp_path / "run"
    assert main(["train", write_config(tmp_path, TINY_RUN), "--run-dir", str(run)]) == 0
    written = json.loads((run / "release" / "privacy.json").read_text())
    report = PrivacyReport.from_dict(written)
    assert report.to_dict() == written
    assert report.data is not None and report.data.private == DataDescription("digits", 1437)  # the held-out fifth is the test split
    assert report.method == "DPDM" and [s["name"] for s in report.stages] == ["dpsgd"]


def test_class_names_and_their_source_read_back_and_stay_in_a_release():
    described = DataDescription("csv", 10, path="/owner/list.csv", class_names=("ant", "cat"),
                                class_names_source="from the class names in the CSV's label column")
    released = described.released(size_declared=True).to_dict()
    assert released == {"dataset": "csv", "split": "train", "class_names": ["ant", "cat"],
                        "class_names_source": "from the class names in the CSV's label column"}
    assert DataDescription.from_dict(json.loads(json.dumps(described.to_dict()))) == described


def test_a_release_states_the_folder_names_as_taken_from_the_layout(tmp_path):
    from tests.data.fakes import write_png

    for label, name in enumerate(("ant", "cat")):
        for i in range(6):
            write_png(tmp_path / "images" / name / f"{i}.png", (8, 8), 100 * label + i, mode="L")
    config = write_config(tmp_path, TINY_RUN.replace("data: {name: digits}", "data: {name: imagefolder, path: "
                                                     f"'{tmp_path / 'images'}', resolution: 8, channels: 1}}"))
    run = tmp_path / "run"
    assert main(["train", config, "--run-dir", str(run), "--set", "privacy.batch_size=2", "--set", "model.num_classes=2"]) == 0
    private = json.loads((run / "release" / "privacy.json").read_text())["data"]["private"]
    assert private["dataset"] == "imagefolder" and private["class_names"] == ["ant", "cat"]
    assert private["class_names_source"] == "from the image folder's sub-folder names (the data's layout, not its content)"
    assert "path" not in private and str(tmp_path) not in (run / "release" / "privacy.json").read_text()
