"""The rewrite stage (`effconv rewrite`): a teacher spec -> a Turbo-VAED student directory, its spec and manifest."""
