def add_parser(sub):  # filled in below
    pass
