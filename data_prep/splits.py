"""Which split a patient belongs to: whole patients, train first, then test, then validation.

Validation patients come after the test patients, so that adding them to a preset leaves the
training and test patients (their ids, slices and noise draws) exactly as they were.
"""

import abc
import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

from consensus_jax.errors import ConfigError

#: Version of both builders' datasets (1.1.0: the validation split).
VERSION = "1.1.0"

SPLITS = ("train", "test", "validation")


@dataclasses.dataclass(frozen=True)
class PatientSource:
    """One patient: a name, an id, its split, the slices drawn from it, and where its images
    come from (a phantom seed, a DICOM folder, a NumPy or fastMRI file, the MNI template)."""

    patient: str
    patient_id: int
    split: str
    slice_indices: tuple[int, ...]
    location: str


def split_of(index: int, num_train: int, num_test: int, num_validation: int) -> str:
    """The split of the patient at position ``index`` of the patient list: train, test,
    validation, then extra training patients after the validation ones, so that a larger
    training set leaves every other patient where it was."""
    if index < num_train or index >= num_train + num_test + num_validation:
        return "train"
    return "test" if index < num_train + num_test else "validation"


def num_patients(config: Any) -> int:
    """Every patient a builder config lists: train, test, validation and extra training ones."""
    return (config.num_train_patients + config.num_test_patients
            + config.num_validation_patients + config.extra_train_patients)


def check_patient_counts(num_train: int, num_test: int, num_validation: int) -> None:
    """Raises ValueError unless there is at least one training and one test patient."""
    if num_train < 1 or num_test < 1 or num_validation < 0:
        raise ConfigError(f"Need >= 1 training, >= 1 test and >= 0 validation patients, got "
                          f"{num_train}, {num_test} and {num_validation}.")


def used_splits(num_validation: int) -> tuple[str, ...]:
    """The splits a dataset has: no validation split when it has no validation patient."""
    return SPLITS if num_validation else SPLITS[:2]


def slice_key(config: Any, patient_id: int, slice_index: int) -> Any:
    """The jax.random key of every random draw of one slice (noise; MRI also phase, mask and
    split): a function of (config.seed, patient, slice) only."""
    import jax

    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), patient_id)
    return jax.random.fold_in(key, slice_index)


class PatientSplitBuilder(tfds.core.GeneratorBasedBuilder):
    """What the CT and MRI builders share: whole patients per split, one example per slice.

    A subclass sets BUILDER_CONFIGS, MANUAL_SOURCES and MANUAL_DOWNLOAD_INSTRUCTIONS and implements
    ``list_patients`` (with ``manual_dir`` for the sources that read the user's files),
    ``features`` and ``patient_examples`` (``(slice_index, example)`` pairs of one patient).
    """

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {
        "1.0.0": "First release.",
        "1.1.0": "A validation split of whole patients (after the test patients).",
    }
    DEFAULT_CONFIG_NAME = "quick"
    #: Config sources read from --manual_dir.
    MANUAL_SOURCES: frozenset[str] = frozenset()

    @abc.abstractmethod
    def list_patients(self, config: Any, manual_dir: Path | None) -> list[Any]:
        """Every patient of every split."""

    @abc.abstractmethod
    def features(self, config: Any) -> tfds.features.FeaturesDict:
        """The example features of ``config``."""

    @abc.abstractmethod
    def patient_examples(self, config: Any, source: Any) -> Iterator[tuple[int, dict]]:
        """(slice index, image features) of each slice of one patient."""

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        return self.dataset_info_from_configs(
            features=self.features(config),
            metadata=tfds.core.MetadataDict(config.metadata()),
            homepage="https://doi.org/10.1007/978-3-030-32248-9_81",
            description=sys.modules[type(self).__module__].__doc__,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        config = self.builder_config
        manual = dl_manager.manual_dir if config.source in self.MANUAL_SOURCES else None
        patients = self.list_patients(config, Path(manual) if manual else None)
        return {split: self._generate_examples([p for p in patients if p.split == split])
                for split in used_splits(config.num_validation_patients)}

    def _generate_examples(self, patients: list[Any]) -> Iterator[tuple[str, dict]]:
        from tqdm.auto import tqdm

        config = self.builder_config
        for source in tqdm(patients, desc=f"patients ({patients[0].split})", unit="patient"):
            for index, example in self.patient_examples(config, source):
                yield f"{source.patient}-{index:04d}", {
                    **example, "patient": source.patient, "patient_id": source.patient_id,
                    "slice_index": index}
