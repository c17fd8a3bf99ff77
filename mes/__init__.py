"""MES: ISA-95 plant model, work orders, units/VINs, shifts, downtime, quality, roles."""
