"""The async front: V2 REST, routing by model over a consistent-hash ring, response cache."""
