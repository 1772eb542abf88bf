"""Studies that run the whole product many times: the criteria comparison and the architecture sweep."""
