"""Is a checkpoint canonical, and does it act like its teacher: a checkpoint read once into facts
(``inspection``), the structural checks that judge them (``structure``, over ``keys``' state-dict
rules), their report (``report``), the fidelity rule and its measurement (``fidelity``), and latency
through LeRobot's compile path (``compiled``). ``verify``, ``canonicalize`` and ``push`` use them."""
