"""Comparison: every backbone's mean and spread over folds, the paper's Table 1, and a fair pairwise test."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from engine.evaluation.stats import DEFAULT_ALPHA, corrected_resampled_ttest, verdict
from engine.evaluation.summary import DEFAULT_INTERVALS
from engine.reports import explore
from pages import common

common.require_router(__file__)

PAPER_LABELS = {"precision": "precision (paper)", "recall": "recall (paper)", "f1": "F1 (paper)"}
MACRO_LABELS = {"macro_precision": "precision (macro)", "macro_recall": "recall (macro)", "macro_f1": "F1 (macro)"}
DEFINITIONS_NOTE = (
    "**Why two definitions.** The paper's precision/recall are Keras `Precision()`/`Recall()` on one-hot "
    "softmax outputs with a 0.5 threshold: every (image, class) pair counts as one yes/no decision, so the many "
    'easy "not this class" cells lift precision above accuracy (0.98 vs 0.94 in Table 1).  \n'
    "The per-class (macro) figures average each class's own precision and recall, so the small COVID-19 class "
    "weighs as much as the others: use them to judge models, and the paper's to compare with Table 1."
)


def metric_labels(per_class: bool) -> dict[str, str]:
    """The columns of the comparison: the toggle swaps the paper's precision/recall/F1 for the macro ones."""
    chosen = MACRO_LABELS if per_class else {**PAPER_LABELS, "macro_f1": "F1 (macro)"}
    return {"accuracy": "accuracy", **chosen, explore.COVID_RECALL: "COVID-19 recall", "loss": "loss"}


def labelled(table: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    """Keep the chosen metrics' mean and std columns, under readable names."""
    columns = {"backbone": "backbone", "folds": "folds"}
    for key, label in labels.items():
        columns[f"{key} mean"] = label
        columns[f"{key} std"] = f"{label} ±sd"
    present = {k: v for k, v in columns.items() if k in table.columns}
    return table[list(present)].rename(columns=present)


def mark_best(table: pd.DataFrame, best: dict[str, str]):
    """Highlight each metric's best backbone (lowest loss, highest everything else)."""
    numbers = [c for c in table.columns if c not in ("backbone", "folds")]

    def highlight(column: pd.Series) -> list[str]:
        winner = best.get(column.name)
        return ["background-color: #d4edda; font-weight: 700" if b == winner else "" for b in table["backbone"]]

    return table.style.format("{:.3f}", subset=numbers).apply(highlight, subset=[c for c in best if c in table])


def means_table(comparison: pd.DataFrame, labels: dict[str, str]) -> None:
    st.subheader("Mean ± standard deviation over folds")
    best = {
        labels[c.removesuffix(" mean")]: b
        for c, b in explore.best_per_column(comparison).items()
        if c.removesuffix(" mean") in labels
    }
    st.dataframe(mark_best(labelled(comparison, labels), best), hide_index=True)
    st.caption("Click a column header to sort. Green: best mean of each metric (lowest for the loss).")


def interval_cell(row: pd.Series, metric: str) -> str:
    if metric not in row or pd.isna(row[metric]):
        return "–"
    if pd.isna(row[f"{metric} low"]):
        return f"{row[metric]:.3f}"
    return f"{row[metric]:.3f} [{row[f'{metric} low']:.3f}, {row[f'{metric} high']:.3f}]"


def intervals_table(study_id: str, labels: dict[str, str]) -> None:
    st.subheader("Pooled out-of-fold estimate with its 95 % interval")
    table = common.cached(explore.interval_table, study_id)
    shown = pd.DataFrame(
        {
            "model": table["model"],
            "images": table["images"],
            **{label: [interval_cell(row, key) for _, row in table.iterrows()] for key, label in labels.items()},
        }
    )
    st.dataframe(shown, hide_index=True)
    st.caption(
        f"{DEFAULT_INTERVALS.describe()}. Each image is scored once, by the fold model that held it out; the "
        "ensemble averages the backbones' probabilities on the folds they all finished. The interval says how "
        "much the figure depends on which images were drawn; the ± sd above says how much it varies between "
        "fold models."
    )


def paper_table(study_id: str, comparison: pd.DataFrame, definition: str) -> None:
    st.subheader("The paper's Table 1 beside this study")
    side = explore.paper_vs_study(comparison, definition=definition)
    ours = "per-class (macro)" if definition == "per-class" else "the paper's"
    source = common.cached(explore.provenance, study_id)
    st.caption(
        f"paper: the paper's mean over its 5 folds. study: this study's mean over its folds, with {ours} "
        "precision/recall/F1. diff = study − paper, only where both use the same definition (per-class figures "
        "are not comparable with the paper's pooled ones). Only backbones of the paper trained here are listed.  \n"
        f"A diff is not the network's alone: the paper fine-tuned every layer (`paper` protocol) on its images with "
        f"image-level folds; this study ran `{source.protocol}` on {source.dataset} with {source.split}."
    )
    numbers = side.drop(columns=["in this study"])
    styled = numbers[side["in this study"]]
    if styled.empty:
        st.info("None of this study's backbones is one of the paper's 14; the paper's numbers are listed below.")
    else:
        st.dataframe(
            styled.style.format(
                "{:+.3f}", subset=[c for c in numbers if c.endswith("diff")], na_rep="not comparable"
            ).format("{:.3f}", subset=[c for c in numbers if c.endswith(("paper", "study"))]),
            hide_index=True,
        )
    with st.expander("All 14 backbones of the paper's Table 1"):
        paper = explore.paper_table1()
        st.dataframe(paper, hide_index=True)


def fold_plot(study_id: str, labels: dict[str, str]) -> None:
    st.subheader("Every fold")
    long = common.cached(explore.fold_metrics_long, study_id)
    metric = common.choose("Metric", list(labels), param="metric", format_func=labels.get)
    shown = long[long["metric"] == metric]
    figure = px.box(
        shown,
        x="backbone",
        y="value",
        points="all",
        hover_data=["fold"],
        color="backbone",
        labels={"value": labels[metric]},
    )
    figure.update_layout(showlegend=False, height=380, margin={"t": 10})
    st.plotly_chart(figure, width="stretch")


def pairwise_test(study_id: str, backbones: list[str], labels: dict[str, str]) -> None:
    st.subheader("Is one backbone really better than another?")
    if len(backbones) < 2:
        st.info("Train a second backbone in this study to compare two backbones fold by fold.")
        return
    left, middle, right = st.columns(3)
    a = common.choose("Backbone A", backbones, param="backbone", where=left)
    b = common.choose("Backbone B", backbones, param="vs", where=middle, exclude=a)
    metric = common.choose("Metric", list(labels), param="test_metric", where=right, format_func=labels.get)
    paired = common.cached(explore.paired_folds, study_id, metric, a, b)
    if len(paired) < 2:
        st.info(f"{a} and {b} share {len(paired)} finished fold(s); the test needs at least 2.")
        return
    result = corrected_resampled_ttest(
        paired[a], paired[b], n_train=paired["n_train"].mean(), n_test=paired["n_test"].mean()
    )
    sentence = verdict(result, name_a=a, name_b=b, metric=labels[metric], higher_is_better=metric != "loss")
    (st.success if result.p_value < DEFAULT_ALPHA else st.info)(sentence)
    stats = st.columns(5)
    stats[0].metric("mean difference (A − B)", f"{result.mean_difference:+.4f}")
    stats[1].metric("t", f"{result.t:.3f}")
    stats[2].metric("degrees of freedom", result.df)
    stats[3].metric("p-value (two-sided)", f"{result.p_value:.4f}")
    pooled = common.cached(explore.paired_interval, study_id, metric, a, b)
    stats[4].metric(
        "pooled difference, 95 % interval",
        f"{pooled['estimate']:+.4f}",
        help=f"[{pooled['low']:+.4f}, {pooled['high']:+.4f}]: paired bootstrap of the same resampled images "
        f"({pooled['n_images']:,} images of folds {pooled['folds']})",
    )
    st.caption(
        f"Pooled difference (A − B) on the same resampled images: {pooled['estimate']:+.4f}, 95 % interval "
        f"[{pooled['low']:+.4f}, {pooled['high']:+.4f}] ({DEFAULT_INTERVALS.describe()}). An interval that "
        "excludes 0 says these images tell the two models apart; the t-test also counts how they vary between folds."
    )
    st.dataframe(paired.assign(difference=paired[a] - paired[b]), hide_index=True)
    st.caption(
        "Corrected resampled t-test (Nadeau and Bengio, 2003): t = mean(d) / sqrt((1/k + n_test/n_train) · var(d)). "
        "Folds share most of their training images, so a plain paired t-test finds differences that are not there."
    )


study_id = common.study_page("Backbone comparison")
comparison = common.cached(explore.comparison_table, study_id)
per_class = st.toggle(
    "Per-class (macro) precision, recall and F1",
    value=common.remembered("definition") == "per-class",
    help="Off: the paper's definitions, to compare with its Table 1. On: the proper per-class means.",
)
definition = "per-class" if per_class else "paper"
common.remember(definition=definition)
st.info(DEFINITIONS_NOTE, icon=":material/info:")
labels = metric_labels(per_class)
means_table(comparison, labels)
intervals_table(study_id, labels)
paper_table(study_id, comparison, definition)
fold_plot(study_id, labels)
pairwise_test(study_id, list(comparison["backbone"]), labels)
common.page_link("confusion", "See the confusion matrices of these backbones", query_params={"study": study_id})
