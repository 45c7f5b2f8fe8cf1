# Fabric guest module: import it into every NixOS configuration that runs as a Fabric
# machine, and into the Proxmox template image those machines are cloned from.
# README.md beside this file explains how to use it and why each setting is here.
{
  config,
  lib,
  options,
  pkgs,
  ...
}:

let
  cfg = config.fabric.guest;
  inherit (lib)
    mkDefault
    mkIf
    mkMerge
    mkOption
    types
    ;
  # Written by cloud-init from the claim's spec.nix.flakeRef (function/cloudinit/nixos.py).
  flakeRefFile = "/etc/fabric/flake-ref";
  # Read only when adminUser is set: the admin's keys as the whole configuration declares them.
  adminAuthorizedKeys = config.users.users.${cfg.adminUser}.openssh.authorizedKeys;
  adminHasKeys = adminAuthorizedKeys.keys != [ ] || adminAuthorizedKeys.keyFiles != [ ];
in
{
  options.fabric.guest = {
    enable = mkOption {
      type = types.bool;
      default = true;
      description = "Configure this machine as a Fabric guest (importing the module turns it on).";
    };

    flake = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "git+https://git.example/homelab?ref=main";
      description = ''
        The flake this machine keeps pulling (system.autoUpgrade.flake). Without a
        "#name" suffix nixos-rebuild picks nixosConfigurations.<hostname>, so one value
        serves every machine of the flake. When null, the fabric-upgrade service reads
        the flake ref that cloud-init wrote to /etc/fabric/flake-ref, at run time.
      '';
    };

    upgrade = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Pull the flake and switch to it on a timer: day-2 convergence that needs no
          Kubernetes, only the git server.
        '';
      };
      dates = mkOption {
        type = types.str;
        default = "04:40";
        description = "When to pull, as a systemd calendar expression.";
      };
      randomizedDelaySec = mkOption {
        type = types.str;
        default = "45min";
        description = "Random delay added to dates, so machines do not all switch at once.";
      };
      allowReboot = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Reboot when the new generation changes the kernel, initrd or kernel modules.
          Only with `flake` set (it is system.autoUpgrade.allowReboot).
        '';
      };
    };

    adminUser = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "admin";
      description = ''
        The admin user cloud-init creates (the claim's spec.bootstrap.adminUser). Needed
        only with users.mutableUsers = false: then the configuration must declare the user,
        or the first switch deletes it and its keys.
      '';
    };

    adminKeys = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "SSH public keys of adminUser, when the configuration declares it.";
    };

    passwordlessSudo = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Let wheel use sudo without a password. The admin user cloud-init creates is in
        wheel and has a locked password; NixOS's sudo does not read /etc/sudoers.d.
      '';
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      # cloud-init applies the Proxmox cloud-init drive: hostname, admin user and keys, and
      # the network from the VM's ip_config (Fabric's user-data carries no network).
      services.cloud-init.enable = true;
      services.cloud-init.network.enable = mkDefault true;
      # An empty hostName leaves the hostname to cloud-init (proxmox-image.nix forces it).
      networking.hostName = mkDefault "";
      # Proxmox reads the VM's addresses through the agent (Terraform's ipv4 output).
      services.qemuGuest.enable = true;

      services.openssh = {
        enable = true;
        settings = {
          PasswordAuthentication = false;
          KbdInteractiveAuthentication = false;
          PermitRootLogin = mkDefault "prohibit-password";
        };
      };
      security.sudo.wheelNeedsPassword = mkDefault (!cfg.passwordlessSudo);

      # The bootstrap switch and the upgrades use flakes; git fetches git+https/git+ssh refs.
      # extra-experimental-features adds to whatever the host configuration sets, in either
      # form (nix.settings.experimental-features as a list or as "nix-command flakes").
      nix.settings.extra-experimental-features = [
        "nix-command"
        "flakes"
      ];
      environment.systemPackages = [ pkgs.git ];

      # cloud-init adds the admin user to /etc/passwd; with immutable users NixOS rewrites
      # /etc/passwd at every switch and the user (and its SSH keys) disappears. Then the
      # configuration must declare the admin with keys: SSH takes keys only, so an admin
      # without keys locks the owner out as surely as no admin at all.
      users.mutableUsers = mkDefault true;
      assertions = [
        {
          assertion = config.users.mutableUsers || (cfg.adminUser != null && adminHasKeys);
          message = ''
            fabric.guest: users.mutableUsers = false deletes the admin user cloud-init made,
            and its SSH keys, at the first switch; set fabric.guest.adminUser and
            fabric.guest.adminKeys (or the user's openssh.authorizedKeys) so the configuration
            declares it with keys.
          '';
        }
      ];

      users.users = mkIf (cfg.adminUser != null) {
        ${cfg.adminUser} = {
          isNormalUser = true;
          extraGroups = [ "wheel" ];
          openssh.authorizedKeys.keys = cfg.adminKeys;
        };
      };
    }

    # cloud-init's network config is rendered for systemd-networkd. NixOS's default
    # scripted networking would also run dhcpcd on every interface (useDHCP defaults to
    # true), and nixpkgs warns that the two can fight over the same interfaces; let
    # networkd alone manage them, as proxmox-image.nix does with useDHCP = false.
    (mkIf config.services.cloud-init.network.enable {
      networking.useNetworkd = mkDefault true;
      networking.useDHCP = mkDefault false;
    })

    (mkIf (cfg.upgrade.enable && cfg.flake != null) {
      system.autoUpgrade =
        {
          enable = true;
          flake = cfg.flake; # nixpkgs adds --refresh for flakes
          dates = cfg.upgrade.dates;
          randomizedDelaySec = cfg.upgrade.randomizedDelaySec;
          allowReboot = cfg.upgrade.allowReboot;
        }
        # nixpkgs adds --upgrade (nix-channel --update: channels a flake machine does not
        # read) unless upgrade = false. The option is newer than 24.11 (nixpkgs PR
        # #409185); where it is missing, setting it would fail evaluation, so it is set only
        # where it exists.
        // lib.optionalAttrs (options.system.autoUpgrade ? upgrade) { upgrade = false; };
    })

    (mkIf (cfg.upgrade.enable && cfg.flake == null) {
      # system.autoUpgrade bakes the flake ref into the configuration; this service reads
      # the ref cloud-init wrote instead, so one configuration fits any machine's claim.
      systemd.services.fabric-upgrade = {
        description = "Fabric: pull and switch to the flake in ${flakeRefFile}";
        # Like nixos-upgrade: the switch this service runs must not restart or stop it.
        restartIfChanged = false;
        unitConfig.X-StopOnRemoval = false;
        serviceConfig.Type = "oneshot";
        wants = [ "network-online.target" ];
        after = [ "network-online.target" ];
        environment = config.nix.envVars // {
          inherit (config.environment.sessionVariables) NIX_PATH;
          HOME = "/root";
        };
        path = [
          pkgs.coreutils
          pkgs.gnutar
          pkgs.xz.bin
          pkgs.gzip
          pkgs.git
          config.nix.package.out
          config.programs.ssh.package
        ];
        # NixOS runs the script under `set -e`; `read` fails on a last line without a
        # newline (a ref written by hand with printf), hence `|| true`.
        script = ''
          ref=""
          if [ -s ${flakeRefFile} ]; then
            IFS= read -r ref < ${flakeRefFile} || true
          fi
          if [ -z "$ref" ]; then
            echo "fabric-upgrade: no flake ref in ${flakeRefFile}; nothing to do"
            exit 0
          fi
          exec /run/current-system/sw/bin/nixos-rebuild switch --refresh --flake "$ref"
        '';
        startAt = cfg.upgrade.dates;
      };
      systemd.timers.fabric-upgrade.timerConfig = {
        RandomizedDelaySec = cfg.upgrade.randomizedDelaySec;
        Persistent = true;
      };
      warnings = lib.optional cfg.upgrade.allowReboot ''
        fabric.guest.upgrade.allowReboot needs fabric.guest.flake (it is
        system.autoUpgrade.allowReboot); it has no effect when the ref comes from ${flakeRefFile}.
      '';
    })
  ]);
}
