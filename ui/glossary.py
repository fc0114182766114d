"""The glossary: every term the pages use, in plain words, with its formula and where it shows.

One home for what a newcomer looks up (the pages' column help and captions give the short
form). The Glossary page (``pages/5_Glossary.py``) draws :data:`TERMS` by section; a page
links to one term with :func:`link` (``/Glossary?term=stable-rank`` opens the page filtered
to it). The formulas are those of ``docs/definitions.md`` and ``lorarank``'s code, in the
pages' notation (s·B·A, σᵢ, Σσ²).
"""

from __future__ import annotations

from dataclasses import dataclass

from .common import Markdown, md

__all__ = ["Term", "TERMS", "SECTIONS", "slug", "find", "link", "entries_markdown", "PAGE_PATH",
           "TERM_PARAM"]

#: The glossary page's script and its URL parameter naming one term.
PAGE_PATH = "pages/5_Glossary.py"
TERM_PARAM = "term"


@dataclass(frozen=True)
class Term:
    """One entry: its name, the section it belongs to, plain words, and (optionally) the
    formula, where the pages show it and where it comes from (plain text: the page escapes it)."""

    name: str
    section: str
    plain: str
    formula: str = ""
    where: str = ""
    source: str = ""

    @property
    def slug(self) -> str:
        return slug(self.name)


def slug(name: str) -> str:
    """``"Eckart-Young theorem"`` -> ``"eckart-young-theorem"`` (the term's URL value)."""
    out = "".join(c.lower() if c.isalnum() else "-" for c in name)
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-")


SECTIONS = ("The update", "Its spectrum", "Choosing a rank", "Comparing adapters",
            "Against the base model", "Adapter families", "Training")

TERMS: tuple[Term, ...] = (
    # ------------------------------------------------------------------------------ update
    Term("LoRA", "The update",
         "Low-rank adaptation: a frozen weight W0 gets a trainable update made of two thin "
         "matrices, so a layer computes h = W0·x + s·B·A·x.",
         "B is d_out × r and starts at zero; A is r × d_in, small and random (PEFT: "
         "Kaiming-uniform).", "Every page.", "Hu et al. 2022, LoRA (ICLR)."),
    Term("update dW", "The update",
         "What the adapter adds to the base weight: dW = s·B·A, a d_out × d_in matrix of rank "
         "at most r. lorarank never forms it densely: everything is computed from B and A.",
         "dW = s·B·A", "Adapter audit: every number is about dW (DoRA without base weights: "
         "about its directional part, labelled so)."),
    Term("rank r", "The update",
         "The stored rank: the inner size of B and A, set in the training config (PEFT r, "
         "kohya network_dim). dW has at most r directions; it may use fewer.",
         "", "Per-module table (r), Rank sweep (the ranks fitted)."),
    Term("intrinsic rank k", "The update",
         "How many directions the task really needs. The Rank sweep plants k directions in a "
         "synthetic target T, so a rank r < k cannot hold it and r > k spends the extra "
         "directions on noise.", "", "Rank sweep, alpha/r stability (the target)."),
    Term("scale s and alpha", "The update",
         "The multiplier of B·A. Its convention depends on the library that wrote the file, and "
         "it changes what a learning rate does when r changes.",
         "PEFT s = lora_alpha / r; rsLoRA s = lora_alpha / √r; kohya s = alpha / r (no alpha "
         "key: s = 1); mlx-lm a stored scale.",
         "Adapter audit (detected scaling), alpha/r stability (the calculator)."),
    Term("rsLoRA", "The update",
         "Rank-stabilised LoRA: s = alpha / √r instead of alpha / r, so the update's size and "
         "a good learning rate depend less on r (PEFT use_rslora=True).",
         "s = alpha / √r", "alpha/r stability (rule rslora).", "Kalajdzievski 2023."),
    # ---------------------------------------------------------------------------- spectrum
    Term("singular values σᵢ", "Its spectrum",
         "The strengths of dW's directions, largest first: dW maps its i-th input direction to "
         "its i-th output direction scaled by σᵢ. At most r of them are nonzero.",
         "σ₁ ≥ σ₂ ≥ … ≥ σ_r ≥ 0, from the QR of B and of Aᵀ and the SVD of an r × r core.",
         "Spectrum tab, top singular values column."),
    Term("energy Σσ²", "Its spectrum",
         "The squared size of the update, ||dW||_F² = Σσ²; keeping the top directions keeps "
         "their share of it.", "Σσ² = Σᵢ σᵢ²", "Budget and Resize tabs (retained energy)."),
    Term("energy rank k(t)", "Its spectrum",
         "How many of the strongest directions hold a share t of the energy (t = 0.9, 0.95, "
         "0.99).", "smallest k with Σ_{i≤k} σᵢ² ≥ t·Σσ²", "Per-module table k(0.9) … k(0.99)."),
    Term("stable rank", "Its spectrum",
         "How many directions of full strength σ₁ the energy would fill: 1 when one direction "
         "dominates, r when all r are equal. A smooth, robust count.",
         "Σσ² / σ₁²", "Per-module table, rank map."),
    Term("entropy rank", "Its spectrum",
         "The effective number of directions, from the entropy of the normalised singular "
         "values: equal values give r, one dominant value gives about 1.",
         "exp(−Σ pᵢ log pᵢ), pᵢ = σᵢ / Σσ", "Per-module table, the entropy rule.",
         "Roy and Vetterli 2007."),
    Term("effective rank", "Its spectrum",
         "In the Rank sweep: how many trained directions rise above the noise floor, i.e. "
         "carry the task rather than noise.", "count of σᵢ above the Gavish-Donoho threshold",
         "Rank sweep table."),
    Term("Eckart-Young theorem", "Its spectrum",
         "Cutting dW to its top k directions is the best rank-k approximation there is: no "
         "other rank-k matrix is closer. So the error of a rank-k fit can be read off the "
         "singular values, and a resize that keeps the top k loses exactly that.",
         "min over rank-k M of ||dW − M||_F / ||dW||_F = √(Σ_{i>k} σᵢ² / Σσ²)",
         "Rank sweep (Eckart-Young optimum), truncation error, Resize, Budget.",
         "Eckart and Young 1936 (Mirsky 1960)."),
    Term("truncation error", "Its spectrum",
         "What a resize to k directions loses, relative to the whole update (Eckart-Young: "
         "the least any rank-k matrix can lose).", "√(Σ_{i>k} σᵢ² / Σσ²)",
         "Per-module table, Resize tab."),
    Term("noise floor", "Its spectrum",
         "The singular value below which a direction is indistinguishable from noise of the "
         "known level: directions under it fit noise, not the task.",
         "the Gavish-Donoho threshold for the noise level", "Rank sweep spectra (dashed line).",
         ""),
    Term("Gavish-Donoho threshold", "Its spectrum",
         "The optimal hard threshold for singular values of a low-rank matrix plus white noise "
         "of known level: keep the values above it. For a square n × n matrix with noise level "
         "ν it is (4/√3)·√n·ν; other shapes use the aspect ratio's λ*(β).",
         "τ = λ*(β)·√(d_max)·ν, β = d_min / d_max", "Rank sweep (noise floor, effective rank).",
         "Gavish and Donoho 2014, The optimal hard threshold for singular values is 4/√3."),
    Term("Marchenko-Pastur", "Its spectrum",
         "The law of the singular values of a large random noise matrix: they spread over a "
         "known band. The synthetic target's noise directions take those typical values.",
         "", "Rank sweep (the target's noise floor).", "Marchenko and Pastur 1967."),
    # ---------------------------------------------------------------------------- choosing
    Term("recommended rank", "Choosing a rank",
         "The rank the chosen rule keeps for a module: what a resize by that rule would cut "
         "the module to.", "", "Per-module table, Resize tab, the reading."),
    Term("energy share rule", "Choosing a rank",
         "Keep the fewest directions that hold a share t of the module's energy: the energy "
         "rank k(t).", "smallest k with Σ_{i≤k} σᵢ² ≥ t·Σσ²", "Per module (rule)."),
    Term("sv_ratio", "Choosing a rank",
         "kohya's rule: keep every direction at least 1/R as strong as the strongest.",
         "keep σᵢ > σ₁ / R", "Per module (rule).", "kohya sd-scripts resize_lora.py."),
    Term("sv_fro", "Choosing a rank",
         "kohya's rule: keep a share t of the Frobenius norm (so t² of the energy).",
         "smallest k with √(Σ_{i≤k} σᵢ² / Σσ²) ≥ t", "Per module (rule).",
         "kohya sd-scripts resize_lora.py."),
    Term("sv_cumulative", "Choosing a rank",
         "kohya's rule: keep a share t of the sum of singular values (an L1 share).",
         "smallest k with Σ_{i≤k} σᵢ ≥ t·Σσ", "Per module (rule).",
         "kohya sd-scripts resize_lora.py."),
    Term("rank budget", "Choosing a rank",
         "A number of directions for the whole adapter, spent on the strongest ones wherever "
         "they are (largest σ² first across modules). By Eckart-Young no other allocation of as "
         "many directions keeps more energy.", "", "Budget tab, resize by budget."),
    Term("resize", "Choosing a rank",
         "Rewrite an adapter at smaller ranks without retraining: each module becomes the best "
         "rank-k approximation of its dW (B_k = U_k·√S_k, A_k = √S_k·V_kᵀ, scale folded in).",
         "", "Resize tab, lorarank resize."),
    # --------------------------------------------------------------------------- comparing
    Term("subspace similarity φ", "Comparing adapters",
         "How much two adapters' top input directions overlap: 1 when the top-i directions of "
         "one span the top-j of the other, 0 when they are orthogonal.",
         "φ(i, j) = ||U_iᵀ V_j||_F² / min(i, j) on the right singular vectors of the two A "
         "factors", "Compare tab, Rank over training.",
         "Hu et al. 2022, LoRA, section 7.2."),
    Term("φ(k, k)", "Comparing adapters",
         "φ at i = j = k: the overlap of the two adapters' top-k directions, one number per "
         "module (k = min(chosen k, r_A, r_B)).", "", "Compare table, Rank over training."),
    Term("chance level", "Comparing adapters",
         "What φ(k, k) two random k-dimensional subspaces of a d_in-dimensional space give on "
         "average: an overlap near it means no shared direction.", "k / d_in",
         "Compare tab (tick), Rank over training (dotted line)."),
    Term("principal angle", "Comparing adapters",
         "The smallest angle between the two row spaces: 0° when they share a direction.", "",
         "Compare table (smallest angle)."),
    Term("settled step", "Comparing adapters",
         "In a training run: the first checkpoint after which no module's recommended rank "
         "changed again.", "", "Rank over training."),
    # ----------------------------------------------------------------------------- the base
    Term("intruder dimensions", "Against the base model",
         "New high-ranking directions of the fine-tuned weight W0 + dW that resemble none of "
         "the base weight's own: among the top k left singular vectors of W0 + dW, those whose "
         "largest |cos| with every left singular vector of W0 is below ε (k = 10, ε = 0.5 by "
         "default). Linked to forgetting.", "",
         "Against the base tab, Full fine-tune tab.",
         "Shuttleworth et al. 2024, LoRA vs Full Fine-tuning: An Illusion of Equivalence; "
         "computed as PEFT's reduce_intruder_dimension."),
    Term("relative size", "Against the base model",
         "How large the update is next to the weight it changes.", "||dW||_F / ||W0||_F",
         "Per-module table |dW|/|W0| (with base weights)."),
    Term("amplification factor", "Against the base model",
         "How strongly the update amplifies directions the base weight barely uses: about 1 "
         "when it only reweights W0's strong directions, large when it adds weak ones.",
         "||dW||_F / ||U_rᵀ W0 V_r||_F, U_r and V_r the singular vectors of dW",
         "Against the base tab.", "Hu et al. 2022, LoRA, section 7.3."),
    Term("PiSSA and OLoRA", "Against the base model",
         "LoRA variants that start B and A from the base weight's own top directions (SVD or "
         "QR) instead of zero, and subtract them from W0. Saved raw, s·B·A is not the update; "
         "the update is the change from that start.", "", "Against the base tab."),
    # ----------------------------------------------------------------------------- families
    Term("DoRA", "Adapter families",
         "Weight-decomposed LoRA: a LoRA direction plus a learned magnitude per output row. "
         "Without the base weights only the directional part s·B·A can be audited (said so); "
         "with them, the true update.",
         "dW = diag(m / ||W0 + s·B·A||_row)·(W0 + s·B·A) − W0", "Adapter audit.",
         "Liu et al. 2024, DoRA."),
    Term("AdaLoRA", "Adapter families",
         "LoRA with a learned diagonal E between B and A whose small entries are pruned during "
         "training, so each module ends with its own rank.",
         "dW = B·(A·E)·alpha / (ranknum + 1e-5)", "Adapter audit.", "Zhang et al. 2023."),
    Term("LoHa", "Adapter families",
         "LyCORIS' Hadamard-product adapter: the element-wise product of two low-rank "
         "matrices, so its rank can reach r² with few numbers.",
         "dW = (W1a·W1b) ∘ (W2a·W2b)·scale", "Adapter audit (stored r vs the update's rank)."),
    Term("LoKr", "Adapter families",
         "LyCORIS' Kronecker-product adapter: dW is the Kronecker product of a small and a "
         "(low-rank) large factor; its rank is the product of the factors' ranks.",
         "dW = kron(W1, W2a·W2b)·scale", "Adapter audit (stored r vs the update's rank)."),
    Term("LoCon (Tucker)", "Adapter families",
         "LyCORIS' LoRA for convolutions; with a Tucker core, the kernel's spatial part sits "
         "in a small middle tensor between down and up.", "", "Adapter audit."),
    # ----------------------------------------------------------------------------- training
    Term("learning-rate window", "Training",
         "For one scaling rule and rank: the learning rates that trained without diverging, up "
         "to the largest stable one and below the smallest that diverged.", "",
         "alpha/r stability (Learning-rate window tab)."),
    Term("SGD bound 1/(s·σ₁)", "Training",
         "Where plain gradient descent on 0.5·||s·B·A − T||² turns unstable near the solution: "
         "learning rates above about 1 / (s·σ₁(T)) overshoot. A guide for SGD, not for Adam.",
         "lr < 1 / (s·σ₁(T))", "alpha/r stability."),
    Term("diverged", "Training",
         "A run whose loss became non-finite or grew past 10⁴ times its start; the tables say "
         "at which step, never NaN.", "", "Rank sweep, alpha/r stability."),
    Term("held-out loss", "Training",
         "In the finite-data mode: the loss on pairs the fit never saw. It falls while more "
         "rank captures the task and rises once the extra directions fit the training pairs' "
         "noise.", "mean of 0.5·||s·B·A·x − y||² over the held-out pairs",
         "Rank sweep, data mode (Held-out loss tab)."),
    Term("rank-r optimum (training)", "Training",
         "The smallest training loss any rank-r matrix reaches on the training pairs "
         "(reduced-rank regression, closed form): the training loss cannot go below it.", "",
         "Rank sweep, data mode."),
)


def find(text: str) -> list[Term]:
    """The terms whose slug is text, else those whose name or words contain it (any case)."""
    text = text.strip()
    if not text:
        return list(TERMS)
    exact = [t for t in TERMS if t.slug == slug(text)]
    if exact:
        return exact
    low = text.lower()
    return [t for t in TERMS
            if low in " ".join((t.name, t.plain, t.formula, t.where, t.source)).lower()]


def link(name: str) -> str:
    """The URL path of one term on the glossary page (/Glossary?term=stable-rank)."""
    return f"/Glossary?{TERM_PARAM}={slug(name)}"


def entries_markdown(terms: list[Term]) -> Markdown:
    """``terms`` by section as one markdown text (headings, the term in bold, its parts)."""
    out: list[Markdown] = []
    for section in SECTIONS:
        chosen = [t for t in terms if t.section == section]
        if not chosen:
            continue
        out.append(md("### {section}", section=section))
        for t in chosen:
            lines = [md("**{name}**: {plain}", name=t.name, plain=t.plain)]
            if t.formula:
                lines.append(md("*Formula:* {formula}", formula=t.formula))
            if t.where:
                lines.append(md("*On the pages:* {where}", where=t.where))
            if t.source:
                lines.append(md("*Source:* {source}", source=t.source))
            out.append(Markdown("  \n").join(lines))
    return Markdown("\n\n").join(out)


def term_links(names: list[str] | tuple[str, ...]) -> Markdown:
    """Markdown links to ``names`` on the glossary page, comma-separated (a page's "Terms")."""
    for name in names:
        if find(name) != [t for t in TERMS if t.slug == slug(name)] or not find(name):
            raise KeyError(f"no glossary term {name!r}")
    return Markdown(", ").join(md("[{name}]({url})", name=name, url=Markdown(link(name)))
                               for name in names)
