"""Helpers the stage scripts share: scoring predictions into result rows, fitting temperatures into table rows."""
