"""The convert stage: spec -> model part -> backend artifact + verified manifest."""
