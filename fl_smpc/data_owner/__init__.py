"""What runs on a data owner: its task, its local training, its contribution to the secure sum, its server.

Nothing here takes orders from the model owner beyond the global parameters and a round's settings, which
:class:`~fl_smpc.data_owner.owner.DataOwner` checks against the owner's own bounds.
"""
