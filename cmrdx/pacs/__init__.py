"""Studies where they live: PACS nodes (DICOMweb and DIMSE) as a source and a destination, and cmrdx as a DICOM
node. Configuration (``config``), one client protocol with two implementations (``dicomweb``, ``dimse``), a
cache of retrieved instances (``cache``), reading a study header-first (``study``), storing results back with
retries (``outbox``) and the storage SCP (``listen``).

Nothing here imports torch; pynetdicom and dicomweb-client are imported where they are used."""
