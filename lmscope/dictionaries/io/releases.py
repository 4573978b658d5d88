"""Published dictionary releases lmscope knows how to load: a small curated table, plus SAELens's
registry when the `sae_lens` package is installed (read through its own API, never copied).

    lmscope pretrained list [--model gemma3-270m] [--json]
    lmscope atlas from-pretrained RELEASE --out atlas/            # a name from the list
    lmscope atlas from-pretrained SAELENS_RELEASE --sae-id ID --out atlas/

Each row names the hub reference load_pretrained reads (io/pretrained.py; `{layer}` runs over
the model's layers), the layout (decided again from the files when loading), the model the
files were trained on, the kind, the hook points in lmscope's names, and the licence where the
publisher states one. Repository ids and folder names were checked against the publishers'
own references (SAELens's registry for Gemma Scope 2's folders, circuit-tracer's presets and
tests, the sparsify repositories' cards) on 2026-12-03; nothing here is downloaded by listing.
A row with `loads=False` is a release lmscope reads but refuses, with the reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ...errors import UserError

GS2_270M = "google/gemma-scope-2-270m-pt"
_GS2_LICENCE = "see the repository card (Gemma Scope 2)"


@dataclass(frozen=True)
class Release:
    name: str
    """What a user types after `lmscope atlas from-pretrained`."""
    source: str
    """Hub reference (org/repo[/folder]; `{layer}`: one folder per layer)."""
    layout: str
    """gemmascope2, gemmascope2-clt, circuit-tracer, circuit-tracer-clt, sparsify, saelens."""
    model: str
    """The model the files were trained on (Hugging Face id)."""
    lmscope_model: str
    """What to pass as --model: an lmscope alias, or the Hugging Face id."""
    kind: str
    """sae, transcoder, skip transcoder or clt."""
    hooks: str
    """Hook points in lmscope's names."""
    layers: str
    widths: str
    licence: str
    loads: bool = True
    note: str = ""
    origin: str = "lmscope"
    """'lmscope' (this table) or 'sae_lens registry'."""
    sae_ids: tuple[str, ...] = ()
    """SAELens registry rows: the sae_id values of the release (--sae-id)."""

    @property
    def command(self) -> str:
        sae = " --sae-id SAE_ID" if self.origin != "lmscope" else ""
        return (
            f"lmscope atlas from-pretrained {self.name}{sae} --out atlas/ "
            f"--model {self.lmscope_model}"
        )

    def to_dict(self) -> dict:
        out = asdict(self)
        out["sae_ids"] = list(self.sae_ids)
        out["command"] = self.command
        return out


def _gs2(site: str, folder: str, kind: str, hooks: str, width: str, l0: str, affine: bool):
    suffix = "_affine" if affine else ""
    return Release(
        name=f"gemma-scope-2-270m-pt-{site}-{width}-{l0}{'-affine' if affine else ''}",
        source=f"{GS2_270M}/{folder}/layer_{{layer}}_width_{width}_l0_{l0}{suffix}",
        layout="gemmascope2",
        model="google/gemma-3-270m",
        lmscope_model="gemma3-270m",
        kind=kind,
        hooks=hooks,
        layers="0-17",
        widths=width,
        licence=_GS2_LICENCE,
    )


RELEASES: tuple[Release, ...] = (
    _gs2(
        "transcoders",
        "transcoder_all",
        "skip transcoder",
        "mlp_in -> mlp_out",
        "16k",
        "small",
        True,
    ),
    _gs2("transcoders", "transcoder_all", "transcoder", "mlp_in -> mlp_out", "16k", "small", False),
    _gs2(
        "transcoders", "transcoder_all", "skip transcoder", "mlp_in -> mlp_out", "16k", "big", True
    ),
    _gs2(
        "transcoders",
        "transcoder_all",
        "skip transcoder",
        "mlp_in -> mlp_out",
        "262k",
        "small",
        True,
    ),
    _gs2("res", "resid_post_all", "sae", "resid_post", "16k", "small", False),
    _gs2("res", "resid_post_all", "sae", "resid_post", "262k", "small", False),
    _gs2("mlp", "mlp_out_all", "sae", "mlp_out", "16k", "small", False),
    Release(
        name="gemma-scope-2-270m-pt-att-16k-small",
        source=f"{GS2_270M}/attn_out_all/layer_{{layer}}_width_16k_l0_small",
        layout="gemmascope2",
        model="google/gemma-3-270m",
        lmscope_model="gemma3-270m",
        kind="sae",
        hooks="(self_attn.o_proj input)",
        layers="0-17",
        widths="16k",
        licence=_GS2_LICENCE,
        loads=False,
        note="reads the attention heads' outputs before o_proj (hook_z): no lmscope hook point",
    ),
    Release(
        name="circuit-tracer-gemma-3-270m-clt-262k-medium-affine",
        source="mwhanna/gemma-scope-2-270m-pt/clt/width_262k_l0_medium_affine",
        layout="circuit-tracer-clt",
        model="google/gemma-3-270m",
        lmscope_model="gemma3-270m",
        kind="clt",
        hooks="mlp_in -> mlp_out (all later layers)",
        layers="0-17",
        widths="262k",
        licence=_GS2_LICENCE,
        loads=False,
        note="an affine (skip) CLT: lmscope's CrossLayerTranscoder has no skip connection yet",
    ),
    Release(
        name="circuit-tracer-gemma-2-2b-clt-426k",
        source="mntss/clt-gemma-2-2b-426k",
        layout="circuit-tracer-clt",
        model="google/gemma-2-2b",
        lmscope_model="google/gemma-2-2b",
        kind="clt",
        hooks="mlp_in -> mlp_out (all later layers)",
        layers="0-25",
        widths="426k in all",
        licence="see the repository card",
    ),
    Release(
        name="circuit-tracer-llama-3.2-1b-clt-524k",
        source="mntss/clt-llama-3.2-1b-524k",
        layout="circuit-tracer-clt",
        model="meta-llama/Llama-3.2-1B",
        lmscope_model="meta-llama/Llama-3.2-1B",
        kind="clt",
        hooks="mlp_in -> mlp_out (all later layers)",
        layers="0-15",
        widths="524k in all",
        licence="see the repository card",
    ),
    Release(
        name="circuit-tracer-llama-3.2-1b-transcoders",
        source="mntss/transcoder-Llama-3.2-1B",
        layout="circuit-tracer",
        model="meta-llama/Llama-3.2-1B",
        lmscope_model="meta-llama/Llama-3.2-1B",
        kind="transcoder",
        hooks="mlp_in -> mlp_out",
        layers="0-15",
        widths="see the repository",
        licence="see the repository card",
        note="circuit-tracer's `llama` preset",
    ),
    Release(
        name="circuit-tracer-qwen3-4b-transcoders",
        source="mwhanna/qwen3-4b-transcoders",
        layout="circuit-tracer",
        model="Qwen/Qwen3-4B",
        lmscope_model="Qwen/Qwen3-4B",
        kind="transcoder",
        hooks="mlp_in -> mlp_out",
        layers="0-35",
        widths="see the repository",
        licence="see the repository card",
    ),
    Release(
        name="sparsify-llama-3.1-8b-64x-mlp",
        source="EleutherAI/sae-llama-3.1-8b-64x/layers.{layer}.mlp",
        layout="sparsify",
        model="meta-llama/Llama-3.1-8B",
        lmscope_model="meta-llama/Llama-3.1-8B",
        kind="sae",
        hooks="mlp_out",
        layers="see the repository (one folder per hookpoint)",
        widths="64 x 4096",
        licence="MIT (repository card)",
    ),
    Release(
        name="sparsify-smollm2-135m-64x-random-mlp",
        source="EleutherAI/sae-SmolLM2-135M-64x-random/layers.{layer}.mlp",
        layout="sparsify",
        model="HuggingFaceTB/SmolLM2-135M (randomly initialised)",
        lmscope_model="smollm2-135m",
        kind="sae",
        hooks="mlp_out",
        layers="0-29",
        widths="64 x 576",
        licence="see the repository card",
        note="a control: trained on a RANDOMLY INITIALISED SmolLM2-135M; the widths fit "
        "smollm2-135m but the features describe another network",
    ),
)


def saelens_releases(model: str | None = None) -> list[Release]:
    """SAELens's registry (sae_lens.loading.pretrained_saes_directory), one row per release;
    [] when sae_lens is not installed. Its sae_ids are folders of the release's repository."""
    try:
        from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
    except ImportError:
        return []
    out = []
    for name, r in get_pretrained_saes_directory().items():
        if model and not _model_matches(model, r.model):
            continue
        out.append(
            Release(
                name=name,
                source=r.repo_id,
                layout="saelens registry",
                model=r.model,
                lmscope_model=_EMBEDDED.get(r.model, r.model),
                kind="see sae_lens",
                hooks="from each SAE's config (mapped at import)",
                layers="",
                widths="",
                licence="see the repository card",
                origin="sae_lens registry",
                sae_ids=tuple(r.saes_map),
            )
        )
    return out


_ALIASES = {"gemma3-270m": "gemma-3-270m", "smollm2-135m": "smollm2-135m"}
# Hugging Face ids of the models lmscope embeds (models/registry.py) -> their alias, so a
# SAELens row's default --model loads offline.
_EMBEDDED = {"google/gemma-3-270m": "gemma3-270m"}


def _model_matches(query: str, model: str) -> bool:
    """--model gemma3-270m matches google/gemma-3-270m (and -it); a hub id or part of one
    matches itself."""
    q = query.lower()
    return _ALIASES.get(q, q) in model.lower()


def list_releases(model: str | None = None, *, saelens: bool = True) -> list[Release]:
    """The curated table (and SAELens's registry), optionally for one model."""
    rows = [
        r
        for r in RELEASES
        if not model or _model_matches(model, r.model) or model == r.lmscope_model
    ]
    return rows + (saelens_releases(model) if saelens else [])


def find_release(name: str, sae_id: str | None = None) -> Release | None:
    """A release by name (None if `name` is not one); with sae_id, SAELens's registry row."""
    for r in RELEASES:
        if r.name == name:
            if sae_id:
                raise UserError(f"{name} is an lmscope release; --sae-id is for SAELens releases")
            return r
    if "/" in name and sae_id is None:
        return None
    for r in saelens_releases():
        if r.name == name:
            return r
    if sae_id is not None:
        raise UserError(
            f"{name!r} is not a SAELens release (see `lmscope pretrained list`; --sae-id needs "
            "`pip install sae-lens` for the registry)"
        )
    return None


def saelens_source(release: Release, sae_id: str | None) -> str:
    """The hub reference of one SAE of a SAELens release: repo_id/<folder of sae_id>."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    r = get_pretrained_saes_directory()[release.name]
    if sae_id is None:
        some = ", ".join(list(r.saes_map)[:3])
        raise UserError(
            f"{release.name} is a SAELens release of {len(r.saes_map)} SAEs: pick one with "
            f"--sae-id (e.g. {some}); `lmscope pretrained list --json` lists them"
        )
    if sae_id not in r.saes_map:
        from ...errors import close_matches

        raise UserError(
            f"{release.name} has no SAE {sae_id!r}{close_matches(sae_id, list(r.saes_map))}"
        )
    # SAELens applies some settings from its registry, not from the files; lmscope reads the
    # files, so a release whose registry changes what the SAE computes (an input scale, another
    # hook or normalization) is refused rather than loaded differently from SAELens.
    changes = sorted(set(r.config_overrides or {}) - _HARMLESS_OVERRIDES)
    if sae_id in (r.norm_scaling_factor or {}):
        changes.append("norm_scaling_factor")
    if changes:
        raise UserError(
            f"SAELens sets {', '.join(changes)} for {release.name} from its registry, not from "
            "the files lmscope reads; load it in SAELens and save it (SAE.save_model) with the "
            "scaling folded in, then import that folder"
        )
    return f"{r.repo_id}/{r.saes_map[sae_id]}".rstrip("/")


# Registry overrides that do not change what an SAE computes or where it reads.
_HARMLESS_OVERRIDES = {"dataset_path", "model_from_pretrained_kwargs", "model_name"}


__all__ = [
    "RELEASES",
    "Release",
    "find_release",
    "list_releases",
    "saelens_releases",
    "saelens_source",
]
