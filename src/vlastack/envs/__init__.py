"""Gymnasium environments: RoboCasa-style kitchens on robosuite, and MetaWorld."""
