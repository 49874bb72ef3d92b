"""Series -> a Study: each series' role and view (``roles``), the chosen series assembled into lazy
(slices x phases) stacks with a manifest of every choice (``assemble``), and the Study / StudyView types
(``types``). No torch, no onnxruntime."""

from cmrdx.study.assemble import StudyInspection, assemble_study, inspect_study
from cmrdx.study.types import AssemblyManifest, SeriesDecision, Study, StudyView

__all__ = ["AssemblyManifest", "SeriesDecision", "Study", "StudyInspection", "StudyView", "assemble_study", "inspect_study"]
