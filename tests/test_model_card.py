"""The model card states the guarantee in words from the privacy report alone: epsilon, delta, adjacency, the
accountant, each DP stage, and what is not covered; a report without a guarantee is said to have none."""

import yaml

from dpdiffusion.model_card import model_card
from dpdiffusion.privacy.report import DECLARED_SIZE, PRIVATE_SIZE

CONFIG = {"name": "hospital-xray", "model": {"img_resolution": 32, "in_channels": 1, "num_classes": 2,
                                             "architecture": "ddpmpp"},
          "diffusion": {"parameterisation": "edm", "sigma_data": 0.5},
          "sampling": {"sampler": "dpmpp2m", "steps": 18, "sigma_min": 0.002, "sigma_max": 80, "rho": 7,
                       "guidance": 1.0}}
STAGES = [{"name": "central images", "reads": "private",
           "dp": {"steps": 20, "sample_rate": 0.1, "noise_multiplier": 2.18, "max_grad_norm": 14.0,
                  "epsilon_alone": 0.955}},
          {"name": "warm-up training", "reads": "release"},
          {"name": "dpsgd", "reads": "private",
           "dp": {"steps": 1300, "sample_rate": 0.0085, "noise_multiplier": 0.544, "max_grad_norm": 1.0,
                  "epsilon_alone": 9.92}}]


def report(**changes):
    base = {"private": True, "spent": {"epsilon": 9.978, "delta": 1e-5}, "accountant": "prv",
            "mechanism": "Poisson-subsampled Gaussian (DP-SGD), add/remove-one adjacency", "method": "DP warm-up + DPDM",
            "stages": STAGES, "data": {"private": {"dataset": "imagefolder", "split": "train",
                                                   "class_names": ["normal", "pneumonia"],
                                                   "class_names_source": "from the folder names"},
                                       "public": None, "start": None},
            "dataset_size": {"source": PRIVATE_SIZE, "value": 5000}}
    return {**base, **changes}


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---")[1])


def test_the_card_states_the_guarantee_and_each_stage():
    card = model_card(report(), CONFIG, license="cc-by-nc-4.0")
    front = front_matter(card)
    assert front["library_name"] == "dpdiffusion" and front["license"] == "cc-by-nc-4.0"
    assert {"differential-privacy", "dp-sgd"} <= set(front["tags"])
    assert "(9.978, 1e-05)-differentially private" in card and "one image" in card and "PRV accountant" in card
    assert "central images: 20 Poisson-sampled" in card and "dpsgd: 1300 Poisson-sampled" in card
    assert "warm-up training: reads only release data (no privacy cost)" in card
    assert "hyperparameter searches" in card and "N = 5000" in card
    assert "normal, pneumonia" in card and "from the folder names" in card


def test_what_is_public_is_said_to_be_uncovered_and_a_declared_size_is_not_listed():
    public = report(data={"private": {"dataset": "mnist"}, "public": {"dataset": "emnist-letters"}, "start": None},
                    dataset_size={"source": DECLARED_SIZE, "value": 60000})
    card = model_card(public, CONFIG)
    assert "Public data (emnist-letters)" in card and "N = 60000" not in card


def test_a_report_without_a_guarantee_says_so():
    card = model_card(report(private=False, warning="trained with a non-private teacher"), CONFIG)
    assert "carries no differential-privacy guarantee" in card and "non-private teacher" in card
    assert "-differentially private**" not in card
