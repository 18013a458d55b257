from pyramid.cli import app

app(prog_name="pyramid")
