"""ThemeClassifier keeps scikit-learn's estimator contract: the checks of
``sklearn.utils.estimator_checks`` that apply to an estimator of texts (run on the tf-idf
encoder, with the checks' own data turned into strings)."""

from __future__ import annotations

import pytest
import sklearn.utils.estimator_checks as checks

from qualcode.model.classifier import ThemeClassifier

CHECKS = (
    "check_no_attributes_set_in_init",
    "check_parameters_default_constructible",
    "check_get_params_invariance",
    "check_set_params",
    "check_estimators_unfitted",
    "check_estimator_cloneable",
    "check_estimator_repr",
    "check_estimators_overwrite_params",
    "check_dont_overwrite_parameters",
    "check_fit_check_is_fitted",
    "check_estimators_dtypes",
    "check_mixin_order",
)


@pytest.mark.parametrize("name", CHECKS)
def test_sklearn_estimator_check(name):
    getattr(checks, name)("ThemeClassifier", ThemeClassifier(encoder="tfidf"))


@pytest.mark.parametrize("multi_label", [False, True])
def test_unfitted_model_says_so(multi_label):
    from sklearn.exceptions import NotFittedError

    clf = ThemeClassifier(encoder="tfidf", multi_label=multi_label)
    for method in (clf.predict, clf.predict_proba, clf.decision_function):
        with pytest.raises(NotFittedError):
            method(["en text"])


@pytest.mark.slow
def test_multi_label_probabilities_are_calibrated(tmp_path):
    """A multi-label theme probability of p means the theme is there about p of the time on
    held-out segments, and survives save / load (it used to be the raw class-balanced head)."""
    import numpy as np

    from qualcode.codebook import load_codebook
    from qualcode.model.storage import load_model
    from qualcode.training import read_labels, train

    from .conftest import ROOT

    codebook = load_codebook(ROOT / "corpora" / "codebook.yaml")
    labels = read_labels(ROOT / "corpora" / "labels" / "seed_set.csv", codebook)
    model = train(labels, codebook, encoder="tfidf", multi_label=True, progress=False)
    clf = model.classifier
    P, Y = clf.oof_proba_, clf.oof_target_
    assert abs(P.mean() - Y.mean()) < 0.01
    likely = P >= 0.5
    assert likely.sum() >= 30 and abs(P[likely].mean() - Y[likely].mean()) < 0.1
    model.save(tmp_path / "m")
    texts = labels["text"].tolist()[:20]
    np.testing.assert_allclose(
        load_model(tmp_path / "m").predict_proba(texts), model.predict_proba(texts), atol=1e-6
    )
