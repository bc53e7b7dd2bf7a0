"""Which split a patient belongs to: whole patients, train first, then test, then validation.

Validation patients come after the test patients, so that adding them to a preset leaves the
training and test patients (their ids, slices and noise draws) exactly as they were.
"""

SPLITS = ("train", "test", "validation")


def split_of(index: int, num_train: int, num_test: int) -> str:
    """The split of the patient at position ``index`` of the patient list."""
    if index < num_train:
        return "train"
    return "test" if index < num_train + num_test else "validation"


def check_patient_counts(num_train: int, num_test: int, num_validation: int) -> None:
    """Raises ValueError unless there is at least one training and one test patient."""
    if num_train < 1 or num_test < 1 or num_validation < 0:
        raise ValueError(f"Need >= 1 training, >= 1 test and >= 0 validation patients, got "
                         f"{num_train}, {num_test} and {num_validation}.")


def used_splits(num_validation: int) -> tuple[str, ...]:
    """The splits a dataset has: no validation split when it has no validation patient."""
    return SPLITS if num_validation else SPLITS[:2]
