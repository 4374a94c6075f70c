"""Watching a deployed model: what each front door (``predict``, ``serve``, the DICOM node) screened, as
:class:`~cxrscreen.monitoring.events.ScreeningEvent` objects handed to observers (the audit log, the metrics, the
drift statistic). It lives one floor below the front doors, so none of them imports another."""
