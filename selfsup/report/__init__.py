"""The report: one self-contained HTML page per run (`selfsup report RUN`) or per comparison of
runs. settings.py holds its config section; analysis.py computes from the encoder and the data
(retrievals, embedding map, health, attention); figures.py draws; page.py reads the run folder
and writes the page. Nothing heavy is imported here: the config imports the settings."""
