"""The model card of a release (``release/README.md``, and an exported folder's): the Hugging Face format -- YAML
front matter (library, tags, license) over Markdown -- stating the guarantee in words.

Everything in it comes from the privacy report and the released configuration (which withholds the private data's
locations: ``release.released_config``), so the card says nothing the release does not already say.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dpdiffusion.privacy.report import PRIVATE_SIZE

ACCOUNTANT_NAMES = {
    "prv": "the PRV accountant (Gopi et al. 2021; dp-accounting's PLD where its grid would be too large)",
    "pld": "dp-accounting's privacy-loss-distribution (PLD) accountant",
    "rdp": "dp-accounting's Renyi-DP accountant (an upper bound, looser than PLD)",
}


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else str(value)


def _front_matter(privacy: Mapping[str, Any], config: Mapping[str, Any], *, library: str, license: str) -> list[str]:
    model = config.get("model") or {}
    conditional = bool(model.get("num_classes"))
    tags = ["differential-privacy", "dp-sgd", "diffusion", "synthetic-data", "dpdiffusion"]
    dataset = ((privacy.get("data") or {}).get("private") or {}).get("dataset")
    if dataset:
        tags.append(str(dataset))
    lines = ["---", f"library_name: {library}", f"license: {license}", "tags:"]
    lines += [f"- {tag}" for tag in tags]
    lines.append("pipeline_tag: unconditional-image-generation")
    if conditional:
        lines.append("inference: false  # class-conditional: the label goes into the UNet's class embedding")
    lines.append("---")
    return lines


def _guarantee(privacy: Mapping[str, Any]) -> list[str]:
    spent = privacy.get("spent") or {}
    epsilon, delta = spent.get("epsilon"), spent.get("delta")
    data = privacy.get("data") or {}
    private = data.get("private") or {}
    size = privacy.get("dataset_size") or {}
    accountant = ACCOUNTANT_NAMES.get(str(privacy.get("accountant")), str(privacy.get("accountant")))
    if not privacy.get("private", False):
        return ["## Privacy", "",
                "**This model carries no differential-privacy guarantee.** " + str(privacy.get("warning") or ""), ""]
    lines = ["## Privacy guarantee", "",
             f"This model is **({_number(epsilon)}, {_number(delta)})-differentially private** with respect to its "
             f"private training data ({private.get('dataset', 'a private dataset')}, {private.get('split', 'train')} "
             "split): adding or removing any one image of that dataset changes the probability of any outcome -- "
             f"these weights, or anything computed from them alone -- by at most a factor e^{_number(epsilon)}, "
             f"except with probability {_number(delta)}. The unit of privacy is one image (add/remove-one "
             "adjacency); a person with several images in the dataset is protected with a correspondingly weaker "
             "guarantee.", "",
             f"Mechanism: {privacy.get('mechanism', 'DP-SGD')}. Epsilon is computed by {accountant} over every DP "
             "event of the run:", ""]
    for stage in privacy.get("stages") or ():
        dp = stage.get("dp")
        if dp:
            lines.append(f"- {stage.get('name')}: {dp.get('steps')} Poisson-sampled Gaussian releases at sample rate "
                         f"{_number(dp.get('sample_rate'))}, noise multiplier {_number(dp.get('noise_multiplier'))}, "
                         f"clip norm {_number(dp.get('max_grad_norm'))} (epsilon {_number(dp.get('epsilon_alone'))} "
                         "alone)")
        else:
            lines.append(f"- {stage.get('name')}: reads only {stage.get('reads')} data (no privacy cost)")
    if not privacy.get("stages"):
        for name, part in ((privacy.get("plan") or {}).get("parts") or {"dpsgd": privacy.get("plan") or {}}).items():
            lines.append(f"- {name}: {part.get('steps')} steps at sample rate {_number(part.get('sample_rate'))}, "
                         f"noise multiplier {_number(part.get('noise_multiplier'))}, clip norm "
                         f"{_number(part.get('max_grad_norm'))}")
    lines += ["", "Synthetic images sampled from this model are post-processing and carry the same guarantee.", "",
              "### What the guarantee does not cover", ""]
    uncovered = []
    public = data.get("public")
    start = data.get("start") or {}
    if public:
        uncovered.append(f"Public data ({public.get('dataset', public)}): trained on without privacy; it is not "
                         "protected by this guarantee.")
    if start and "public" in str(start.get("note", "")):
        uncovered.append(f"The starting model ({start.get('kind')}, {start.get('path')}): taken as public.")
    uncovered.append("Choices made by looking at the private data -- hyperparameter searches, repeated runs, picking "
                     "the best of several models -- each spend privacy that this report does not count.")
    if size.get("source") == PRIVATE_SIZE:
        uncovered.append(f"The dataset size N = {size.get('value')}: it sets the public sample rate and is released "
                         "as it is (under add/remove adjacency N itself is private).")
    class_names = private.get("class_names") or ()
    if class_names:
        source = private.get("class_names_source", "declared")
        uncovered.append(f"The class names ({', '.join(map(str, class_names))}; {source}): part of the data's layout, "
                         "released as they are.")
    uncovered.append("Anything the data owner keeps (training logs, loss curves, optimizer state, audit canaries): "
                     "un-noised, never part of this release.")
    lines += [f"- {item}" for item in uncovered]
    return lines


def model_card(privacy: Mapping[str, Any], config: Mapping[str, Any], *, library: str = "dpdiffusion",
               license: str = "other", usage: str | None = None) -> str:
    """The card's text. ``privacy``: the release's privacy report (``PrivacyReport.to_dict``); ``config``: the
    released configuration; ``usage``: a Markdown section on loading the model (default: with dpdiffusion)."""
    model = config.get("model") or {}
    sampling = config.get("sampling") or {}
    diffusion = config.get("diffusion") or {}
    name = config.get("name") or "dpdiffusion model"
    classes = int(model.get("num_classes") or 0)
    private = ((privacy.get("data") or {}).get("private") or {})
    names = private.get("class_names") or ()
    kind = f"class-conditional ({classes} classes{': ' + ', '.join(map(str, names)) if names else ''})" if classes \
        else "unconditional"
    lines = _front_matter(privacy, config, library=library, license=license)
    lines += ["", f"# {name}", "",
              f"A differentially private diffusion model trained with dpdiffusion ({privacy.get('method') or 'DPDM'}): "
              f"{kind}, {model.get('img_resolution')}x{model.get('img_resolution')} pixels, {model.get('in_channels')} "
              f"channel{'s' if model.get('in_channels') != 1 else ''}, network {model.get('architecture', 'ddpmpp')}, "
              f"{diffusion.get('parameterisation', 'edm')} preconditioning (sigma_data "
              f"{_number(diffusion.get('sigma_data'))}).", ""]
    if config.get("description"):
        lines += [str(config["description"]), ""]
    lines += _guarantee(privacy)
    lines += ["", "## Sampling", "",
              f"Defaults of the run: {sampling.get('sampler')} with {sampling.get('steps')} noise levels of EDM's "
              f"schedule (sigma {_number(sampling.get('sigma_max'))} down to {_number(sampling.get('sigma_min'))}, "
              f"rho {_number(sampling.get('rho'))}), guidance weight {_number(sampling.get('guidance'))}."
              + (f" Label {classes} is \"no label\" (classifier-free guidance)." if classes else ""), ""]
    lines += (usage or "## Use\n\n```\ndpdiffusion sample model.safetensors --num 1000 --out synthetic.npz\n```").splitlines()
    lines += ["", "The full privacy report is `privacy.json` next to this card."]
    return "\n".join(lines) + "\n"
