from django.contrib import admin

from mes.models import Area, Line, Site, Station


@admin.register(Site)
class SiteAdmin(admin.ModelAdmin):
    list_display = ["code", "name", "timezone"]
    search_fields = ["code", "name"]


@admin.register(Area)
class AreaAdmin(admin.ModelAdmin):
    list_display = ["code", "name", "site"]
    list_select_related = ["site"]
    list_filter = ["site"]


@admin.register(Line)
class LineAdmin(admin.ModelAdmin):
    list_display = ["code", "name", "area"]
    list_select_related = ["area__site"]
    list_filter = ["area__site"]


@admin.register(Station)
class StationAdmin(admin.ModelAdmin):
    list_display = ["code", "name", "line", "position", "station_type"]
    list_select_related = ["line"]
    list_filter = ["line", "station_type"]
    search_fields = ["code", "name"]
