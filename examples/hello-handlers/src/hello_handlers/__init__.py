"""hello-handlers: an example package of tubeworker handlers."""
