"""The model server: V2 REST, model repository, architectures, execution."""
